"""SV-X-Softmax / MV-Softmax: support vectors (mis-classified negatives) emphasised (Wang et al., AAAI 2020)."""

from __future__ import annotations

import math

from torch import Tensor

from marginkit._validation import check_finite_number
from marginkit.losses.angular_margin import (
    AngularMarginLoss,
    check_margin,
    hard_negative_softmax_loss,
)
from marginkit.ops import combined_margin_logit
from marginkit.ops._dtypes import accumulation_dtype


class SVXSoftmaxLoss(AngularMarginLoss):
    r"""Mis-classified-vector-guided softmax: negatives that beat the target are re-weighted by ``t``.

    With the combined-margin target logit :math:`\phi_i = \cos(m_1\theta_{iy_i} + m_2) - m_3`
    and the indicator :math:`I_{ij} = [\cos\theta_{ij} > \phi_i]` of mis-classified negatives,

    .. math::
        \ell_i = -\log\frac{e^{s\phi_i}}{e^{s\phi_i} + \sum_{j\ne y_i}
        h(t, \theta_{ij}, I_{ij})\, e^{s\cos\theta_{ij}}}, \qquad
        h = e^{s(t-1)(\cos\theta_{ij} + 1) I_{ij}},

    i.e. a mis-classified negative's logit becomes :math:`s(t\cos\theta_{ij} + t - 1)` (the
    paper's adaptive form, FaceX-Zoo's ``MV_Softmax``). With ``t = 1`` and no margin this is
    exactly the normalised softmax (:class:`NormFaceLoss`); ``m3`` gives SV-AM-Softmax, ``m2``
    SV-Arc-Softmax. The margin continues monotonically past :math:`m_1\theta + m_2 = \pi`
    (the ``"monotonic"`` fallback), so every combination decreases in :math:`\theta`.

    **Margin names**: ``m1, m2, m3`` are insightface's (multiplicative angular, additive
    angular, additive cosine). gluon-face's ``SVXSoftmax`` swaps the last two (its ``m2`` is the
    cosine margin, its ``m3`` the angular one): code ported from gluon-face with the same
    keywords would silently train with the wrong margins. Use :meth:`from_gluonface`, which
    takes gluon-face's names.

    **Memory**: with ``t == 1`` the head runs on the fused op (one N×C buffer); with
    ``t != 1`` the rewrite of non-target logits runs the composed path
    (:func:`~marginkit.losses.angular_margin.hard_negative_softmax_loss`: N×C temporaries in
    the forward, 1.25 N×C kept for the backward).

    Paper: X. Wang, S. Zhang, S. Wang, T. Fu, H. Shi, T. Mei, "Mis-classified Vector Guided
    Softmax Loss for Face Recognition", AAAI 2020.

    Args:
        in_features: embedding dimension.
        num_classes: number of training classes.
        s: logit scale, or ``"auto"`` (AdaCos's :math:`\sqrt{2}\log(C-1)`).
            Default 32 (the paper's).
        t: re-weighting of mis-classified negatives, ``>= 1`` (the paper uses 1.2). Default 1.
        m1: multiplicative angular margin, ``> 0``. Default 1.
        m2: additive angular margin in radians, ``[0, pi)``. Default 0.
        m3: additive cosine margin, ``>= 0``. Default 0.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> head = SVXSoftmaxLoss(in_features=8, num_classes=3, s=16.0, t=1.2, m3=0.35)
        >>> head(torch.randn(4, 8), torch.tensor([0, 1, 2, 0])).ndim
        0
    """

    # Its cosines are not one normalised product per class: no fused normalised-linear path.
    supports_memory_efficient = False

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        s: float | str = 32.0,
        t: float = 1.0,
        m1: float = 1.0,
        m2: float = 0.0,
        m3: float = 0.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(in_features, num_classes, s=s, reduction=reduction)
        self.t = check_margin("t", t, lower=1.0)
        self.m1 = check_finite_number("m1", m1, positive=True)
        self.m2 = check_margin("m2", m2, upper=math.pi)
        self.m3 = check_margin("m3", m3)

    @classmethod
    def from_gluonface(
        cls,
        in_features: int,
        num_classes: int,
        *,
        s: float | str,
        t: float,
        m1: float,
        m2: float,
        m3: float,
        reduction: str = "mean",
    ) -> SVXSoftmaxLoss:
        r"""The head built from gluon-face's ``SVXSoftmax`` margins: its ``m2`` is the *cosine*
        margin, its ``m3`` the *angular* one, so :math:`\phi = \cos(m_1\theta + m_3) - m_2`.

        Example:
            >>> head = SVXSoftmaxLoss.from_gluonface(8, 3, s=16.0, t=1.2, m1=1.0, m2=0.35, m3=0.1)
            >>> head.m2, head.m3  # ours: angular, cosine
            (0.1, 0.35)
        """
        return cls(in_features, num_classes, s=s, t=t, m1=m1, m2=m3, m3=m2, reduction=reduction)

    def target_logit(
        self, cos: Tensor, theta: Tensor, embeddings: Tensor, labels: Tensor
    ) -> Tensor:
        return combined_margin_logit(cos, theta, self.m1, self.m2, self.m3, "monotonic")

    def per_row_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if self.t == 1.0:
            return super().per_row_loss(embeddings, labels)
        cos, theta = self.target_angle(embeddings, labels)
        phi = self.target_logit(cos, theta, embeddings, labels)
        cosines = self.cosine(embeddings).to(accumulation_dtype(self.weight.dtype))
        t = self.t
        return hard_negative_softmax_loss(
            cosines, labels, phi, phi.detach(), lambda c: t * c + t - 1.0, self.s
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, t={self.t:g}, m1={self.m1:g}, m2={self.m2:g}, m3={self.m3:g}"
        )
