"""CurricularFace: adaptive curriculum learning of hard negatives (Huang et al., CVPR 2020)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from marginkit.losses._head import detached
from marginkit.losses.angular_margin import (
    AngularMarginLoss,
    check_margin,
    hard_negative_softmax_loss,
)
from marginkit.ops import combined_margin_logit
from marginkit.ops._dtypes import accumulation_dtype


class CurricularFaceLoss(AngularMarginLoss):
    r"""ArcFace target with hard negatives re-weighted by a running curriculum parameter :math:`t`.

    .. math::
        z_{iy_i} = \phi(\theta_{iy_i}) = \cos(\theta_{iy_i} + m), \qquad
        z_{ij} = \begin{cases} \cos\theta_{ij}\,(t + \cos\theta_{ij}) &
        \cos\theta_{ij} > \cos(\theta_{iy_i} + m) \\ \cos\theta_{ij} & \text{otherwise}
        \end{cases}

    and :math:`\ell_i = -\log\operatorname{softmax}(s z_i)_{y_i}`. The buffer ``t`` follows the
    mean target cosine, :math:`t \leftarrow (1-\alpha)t + \alpha\,\overline{\cos\theta_y}`
    (updated before use in each training forward, without gradient): early on :math:`t \approx
    0` and hard negatives are down-weighted (easy samples first), later :math:`t` grows and
    they are emphasised. The target logit uses insightface's continuation
    :math:`\cos\theta - m\sin m` past :math:`\theta + m = \pi`, like the official code.

    **Memory**: the hard-negative rewrite touches non-target logits, which the fused
    margin-agnostic op cannot do, so this head runs a composed plain-torch path
    (:func:`~marginkit.losses.angular_margin.hard_negative_softmax_loss`) that materialises the
    ``(N, C)`` logits: about 3 N×C buffers kept for the backward against 1 for the fused
    heads, plus N×C temporaries in the forward. The target angle
    is still exact.

    Paper: Y. Huang, Y. Wang, Y. Tai, X. Liu, P. Shen, S. Li, J. Li, F. Huang,
    "CurricularFace: Adaptive Curriculum Learning Loss for Deep Face Recognition", CVPR 2020.

    Args:
        in_features: embedding dimension.
        num_classes: number of training classes.
        m: additive angular margin in radians, ``[0, pi)``. Default 0.5.
        s: logit scale, or ``"auto"`` (AdaCos's :math:`\sqrt{2}\log(C-1)`). Default 64.
        momentum: :math:`\alpha` of the running :math:`t`, in ``[0, 1]``. Default 0.01.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> head = CurricularFaceLoss(in_features=8, num_classes=3, s=16.0)
        >>> loss = head(torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))
        >>> loss.ndim, float(head.t) != 0.0
        (0, True)
    """

    # Its cosines are not one normalised product per class: no fused normalised-linear path.
    supports_memory_efficient = False

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        m: float = 0.5,
        s: float | str = 64.0,
        momentum: float = 0.01,
        reduction: str = "mean",
    ) -> None:
        super().__init__(in_features, num_classes, s=s, reduction=reduction)
        self.m = check_margin("m", m, upper=math.pi)
        self.momentum = check_margin("momentum", momentum, upper=1.0 + 1e-12)
        self.register_buffer("t", torch.zeros(()))

    def target_logit(
        self, cos: Tensor, theta: Tensor, embeddings: Tensor, labels: Tensor
    ) -> Tensor:
        return combined_margin_logit(cos, theta, 1.0, self.m, 0.0, "arcface")

    def per_row_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        cos, theta = self.target_angle(embeddings, labels)
        if self.training:
            with torch.no_grad():
                self.t.mul_(1.0 - self.momentum).add_(self.momentum * cos.mean().to(self.t.dtype))
            self.last_logs = {"curricular_t": detached(self.t)}
        phi = self.target_logit(cos, theta, embeddings, labels)
        hard_threshold = combined_margin_logit(cos, theta, 1.0, self.m, 0.0, "none").detach()
        t = self.t.to(phi.dtype)
        cosines = self.cosine(embeddings).to(accumulation_dtype(self.weight.dtype))
        return hard_negative_softmax_loss(
            cosines, labels, phi, hard_threshold, lambda c: c * (t + c), self.s
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m:g}, momentum={self.momentum:g}"
