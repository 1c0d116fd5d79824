"""ArcFace: additive angular margin (Deng et al., CVPR 2019), with label smoothing and an MLP."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from marginkit._validation import check_embeddings, check_option, check_positive_int
from marginkit.losses.angular_margin import AngularMarginLoss, check_margin
from marginkit.ops import GRAD_MODES, combined_margin_logit


class ArcFaceLoss(AngularMarginLoss):
    r"""ArcFace head: target logit :math:`s\cos(\theta_{y} + m)`, other logits :math:`s\cos\theta_j`.

    .. math::
        \ell_i = -\log\frac{e^{s\cos(\theta_{iy_i} + m)}}
        {e^{s\cos(\theta_{iy_i} + m)} + \sum_{j\ne y_i} e^{s\cos\theta_{ij}}}

    Where :math:`\theta_y + m > \pi` the target logit is the continuation
    :math:`\cos\theta_y - m\sin m` (insightface's ``easy_margin=False``), so it keeps decreasing
    in :math:`\theta_y`; with ``easy_margin=True`` the margin applies only where
    :math:`\cos\theta_y > 0`. The target angle comes from the vectors, so the gradient is exact
    down to :math:`\theta_y = 0`.

    Label smoothing (OML's ``ArcFaceLoss``): the target distribution is
    :math:`1-\varepsilon+\varepsilon/K` on the label and :math:`\varepsilon/K` on the other
    classes; with ``label2category`` only the label's category shares :math:`\varepsilon`
    (:math:`K` = that category's size).

    Paper: J. Deng, J. Guo, N. Xue, S. Zafeiriou, "ArcFace: Additive Angular Margin Loss for
    Deep Face Recognition", CVPR 2019.

    Args:
        in_features: embedding dimension.
        num_classes: number of training classes.
        m: additive angular margin in radians, ``0 <= m < pi``. Default 0.5 (the paper's).
        s: logit scale, or ``"auto"`` (AdaCos's :math:`\sqrt{2}\log(C-1)`).
            Default 64 (the paper's, for 10^4–10^6 classes).
        easy_margin: apply the margin only to positive target cosines.
        smoothing_epsilon: label smoothing :math:`\varepsilon \in [0, 1)`.
        label2category: ``{label: category}`` for every label, or ``None``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        memory_efficient: ``True`` / ``False`` / ``"auto"``: run the N×C step on the
            fused normalised-linear op (see :class:`~marginkit.losses.AngularMarginLoss`).
        grad_mode: ``"exact"`` or ``"straight_through"`` (insightface's arcface_torch: the
            margin is added without gradient).

    Example:
        >>> import torch
        >>> head = ArcFaceLoss(in_features=8, num_classes=3, m=0.5, s=16.0)
        >>> loss = head(torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))
        >>> loss.shape
        torch.Size([])
        >>> smoothed = ArcFaceLoss(8, 4, smoothing_epsilon=0.1, label2category={0: 0, 1: 0, 2: 1, 3: 1})
        >>> smoothed(torch.randn(4, 8), torch.tensor([0, 1, 2, 3])).ndim
        0
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        m: float = 0.5,
        s: float | str = 64.0,
        easy_margin: bool = False,
        smoothing_epsilon: float = 0.0,
        label2category: Mapping | None = None,
        reduction: str = "mean",
        grad_mode: str = "exact",
        memory_efficient: bool | str = "auto",
    ) -> None:
        super().__init__(
            in_features,
            num_classes,
            s=s,
            reduction=reduction,
            smoothing_epsilon=smoothing_epsilon,
            label2category=label2category,
            memory_efficient=memory_efficient,
        )
        self.m = check_margin("m", m, upper=math.pi)
        if not isinstance(easy_margin, bool):
            raise TypeError(f"`easy_margin` must be a bool, got {type(easy_margin).__name__}")
        check_option("grad_mode", grad_mode, GRAD_MODES)
        self.easy_margin = easy_margin
        self.margin_fallback = "easy" if easy_margin else "arcface"
        self.grad_mode = grad_mode

    def target_logit(
        self, cos: Tensor, theta: Tensor, embeddings: Tensor, labels: Tensor
    ) -> Tensor:
        return combined_margin_logit(
            cos, theta, 1.0, self.m, 0.0, self.margin_fallback, self.grad_mode
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m:g}, easy_margin={self.easy_margin}"

    def combined_margin(self) -> tuple[float, float, float, str]:
        """This head's target logit as insightface's combined margin ``(m1, m2, m3, fallback)``.

        ``s·(cos(m1·θ + m2) − m3)`` with ``fallback`` the ``margin_fallback`` of
        :func:`marginkit.ops.combined_margin_logit`: what a class-sharded
        :class:`~marginkit.losses.ShardedMarginHead` needs to compute the same loss.
        """
        return (1.0, self.m, 0.0, self.margin_fallback)


class ArcFaceLossWithMLP(nn.Module):
    r"""ArcFace on an MLP projection of the embeddings; the MLP is dropped at inference.

    :math:`\ell = \mathrm{ArcFace}(\mathrm{MLP}(x), y)` with
    ``MLP = Linear → ReLU → … → Linear`` through ``mlp_features`` (the last size is ArcFace's
    embedding dimension), as OML's ``ArcFaceLossWithMLP``: the projector shapes the space the
    margin acts on, and retrieval uses the backbone's embeddings before it.

    Args:
        in_features: backbone embedding dimension (the MLP's input).
        num_classes: number of training classes.
        mlp_features: output sizes of the MLP layers, e.g. ``[256, 128]``.
        m, s, easy_margin, smoothing_epsilon, label2category, reduction, grad_mode,
            memory_efficient: as :class:`ArcFaceLoss`.

    Example:
        >>> import torch
        >>> head = ArcFaceLossWithMLP(in_features=8, num_classes=3, mlp_features=[16, 4], s=8.0)
        >>> head(torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1])).ndim, tuple(head.weight.shape)
        (0, (3, 4))
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        mlp_features: Sequence[int],
        m: float = 0.5,
        s: float | str = 64.0,
        easy_margin: bool = False,
        smoothing_epsilon: float = 0.0,
        label2category: Mapping | None = None,
        reduction: str = "mean",
        grad_mode: str = "exact",
        memory_efficient: bool | str = "auto",
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        if isinstance(mlp_features, str | bytes) or not isinstance(mlp_features, Sequence):
            raise TypeError(
                f"`mlp_features` must be a sequence of ints, got {type(mlp_features).__name__}"
            )
        if len(mlp_features) == 0:
            raise ValueError("`mlp_features` must hold at least one layer size, got []")
        sizes = [in_features] + [check_positive_int("mlp_features", f) for f in mlp_features]
        layers: list[nn.Module] = []
        for index in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[index], sizes[index + 1]))
            if index < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.mlp = nn.Sequential(*layers)
        self.arcface = ArcFaceLoss(
            sizes[-1],
            num_classes,
            m=m,
            s=s,
            easy_margin=easy_margin,
            smoothing_epsilon=smoothing_epsilon,
            label2category=label2category,
            reduction=reduction,
            grad_mode=grad_mode,
            memory_efficient=memory_efficient,
        )
        self.num_classes = self.arcface.num_classes

    @property
    def weight(self) -> nn.Parameter:
        """The ArcFace class weights, ``(num_classes, mlp_features[-1])``."""
        return self.arcface.weight

    def _project(self, embeddings: Tensor) -> Tensor:
        check_embeddings(embeddings, self.in_features)
        return self.mlp(embeddings.to(self.arcface.weight.dtype))

    def logits(self, embeddings: Tensor) -> Tensor:
        r""":math:`s\cos\theta` of the projected embeddings."""
        return self.arcface.logits(self._project(embeddings))

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """ArcFace loss of ``MLP(embeddings)``."""
        return self.arcface(self._project(embeddings), labels)
