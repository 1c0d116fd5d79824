"""CosFace / AM-Softmax: additive cosine margin (Wang et al., CVPR 2018)."""

from __future__ import annotations

from torch import Tensor

from marginkit.losses.angular_margin import AngularMarginLoss, check_margin
from marginkit.ops import combined_margin_logit


class CosFaceLoss(AngularMarginLoss):
    r"""CosFace head: target logit :math:`s(\cos\theta_{y} - m)`, other logits :math:`s\cos\theta_j`.

    .. math::
        \ell_i = -\log\frac{e^{s(\cos\theta_{iy_i} - m)}}
        {e^{s(\cos\theta_{iy_i} - m)} + \sum_{j\ne y_i} e^{s\cos\theta_{ij}}}

    Paper: H. Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition",
    CVPR 2018 (also F. Wang et al., "Additive Margin Softmax for Face Verification", 2018).

    Args:
        in_features: embedding dimension.
        num_classes: number of training classes.
        m: additive cosine margin, ``m >= 0``. Default 0.35 (the paper's).
        s: logit scale, or ``"auto"`` (AdaCos's :math:`\sqrt{2}\log(C-1)`). Default 64.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        memory_efficient: ``True`` / ``False`` / ``"auto"``: run the N×C step on the
            fused normalised-linear op (see :class:`~marginkit.losses.AngularMarginLoss`).

    Example:
        >>> import torch
        >>> head = CosFaceLoss(in_features=8, num_classes=3, m=0.35, s=16.0)
        >>> head(torch.randn(4, 8), torch.tensor([0, 1, 2, 0])).ndim
        0
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        m: float = 0.35,
        s: float | str = 64.0,
        reduction: str = "mean",
        memory_efficient: bool | str = "auto",
    ) -> None:
        super().__init__(
            in_features, num_classes, s=s, reduction=reduction, memory_efficient=memory_efficient
        )
        self.m = check_margin("m", m)

    def target_logit(
        self, cos: Tensor, theta: Tensor, embeddings: Tensor, labels: Tensor
    ) -> Tensor:
        return combined_margin_logit(cos, theta, 1.0, 0.0, self.m)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m:g}"

    def combined_margin(self) -> tuple[float, float, float, str]:
        """This head's target logit as insightface's combined margin ``(m1, m2, m3, fallback)``.

        ``s·(cos(m1·θ + m2) − m3)`` with ``fallback`` the ``margin_fallback`` of
        :func:`marginkit.ops.combined_margin_logit`: what a class-sharded
        :class:`~marginkit.losses.ShardedMarginHead` needs to compute the same loss.
        """
        return (1.0, 0.0, self.m, "none")
