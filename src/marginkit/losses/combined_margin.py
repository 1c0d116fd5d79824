"""insightface's combined margin: ``CombinedMarginHead`` (a head with class weights) and
``CombinedMarginLoss`` (OneFlow's ``nn.CombinedMarginLoss`` on logits, for porting OneFlow code)."""

from __future__ import annotations

import math

from torch import Tensor, nn

from marginkit._validation import (
    check_arcface_fallback,
    check_finite_number,
    check_ignore_index,
    check_margins,
    check_option,
)
from marginkit.losses.angular_margin import AngularMarginLoss, check_margin
from marginkit.ops import combined_margin, combined_margin_logit
from marginkit.ops._margin import GRAD_MODES, MARGIN_FALLBACKS


class CombinedMarginLoss(nn.Module):
    r"""Replace each row's target cosine by its combined margin; return the (unscaled) logits.

    .. math::
        y_{ij} = \begin{cases} \cos(m_1 \arccos x_{ij} + m_2) - m_3 & j = t_i \\
        x_{ij} & j \ne t_i \end{cases}

    OneFlow's ``nn.CombinedMarginLoss(m1, m2, m3)`` semantics: despite the name it returns
    logits, to be scaled and fed to a softmax cross-entropy, e.g.
    ``F.cross_entropy(s * CombinedMarginLoss(1, 0.5, 0)(cos, label), label)`` for ArcFace. The
    fused :func:`marginkit.ops.margin_cross_entropy` computes the same loss without
    materialising the modified logits (and is what marginkit's own heads use).

    Args:
        m1: multiplicative angular margin, ``m1 > 0``.
        m2: additive angular margin in radians.
        m3: additive cosine margin.
        margin_fallback: ``"none"`` (OneFlow), ``"arcface"``, ``"easy"`` or ``"monotonic"``
            (SphereFace's piecewise ψ); see :func:`marginkit.ops.margin_cross_entropy`.
        grad_mode: ``"exact"`` (OneFlow) or ``"straight_through"``.
        ignore_index: label value of rows left unchanged.

    Raises:
        TypeError: a non-number margin, a non-int ``ignore_index``, a non-string option.
        ValueError: a non-finite margin or ``m1 <= 0``, an unknown option.

    Example:
        >>> import torch
        >>> loss_fn = CombinedMarginLoss(m1=1.0, m2=0.0, m3=0.35)
        >>> loss_fn(torch.tensor([[0.5, 0.2]]), torch.tensor([0])).tolist()
        [[0.15000000596046448, 0.20000000298023224]]
    """

    def __init__(
        self,
        m1: float = 1.0,
        m2: float = 0.0,
        m3: float = 0.0,
        *,
        margin_fallback: str = "none",
        grad_mode: str = "exact",
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        self.m1, self.m2, self.m3 = check_margins(m1, m2, m3, ("m1", "m2", "m3"))
        check_option("margin_fallback", margin_fallback, MARGIN_FALLBACKS)
        check_arcface_fallback(margin_fallback, self.m1)
        check_option("grad_mode", grad_mode, GRAD_MODES)
        check_ignore_index(ignore_index)
        self.margin_fallback = margin_fallback
        self.grad_mode = grad_mode
        self.ignore_index = ignore_index

    def forward(self, x: Tensor, label: Tensor) -> Tensor:
        """Return ``x`` (N, C) with the margin applied at ``label`` (N,) in each row."""
        return combined_margin(
            x,
            label,
            self.m1,
            self.m2,
            self.m3,
            margin_fallback=self.margin_fallback,
            grad_mode=self.grad_mode,
            ignore_index=self.ignore_index,
        )

    def extra_repr(self) -> str:
        return f"m1={self.m1:g}, m2={self.m2:g}, m3={self.m3:g}"


class CombinedMarginHead(AngularMarginLoss):
    r"""insightface's combined margin head: target logit :math:`s\,\phi(\theta_y)`, every combination.

    .. math::
        \phi(\theta) = \cos(m_1\theta + m_2) - m_3, \qquad
        \ell_i = -\log\frac{e^{s\phi(\theta_{iy_i})}}
        {e^{s\phi(\theta_{iy_i})} + \sum_{j\ne y_i} e^{s\cos\theta_{ij}}}

    SphereFace is ``(m, 0, 0)``, ArcFace ``(1, m, 0)``, CosFace ``(1, 0, m)``; insightface's
    arcface_torch ``CombinedMarginLoss`` raises for every other combination (only
    ``m1 == 1, m3 == 0`` and ``m3 > 0`` work there). Here every combination works: with the
    default ``margin_fallback="monotonic"`` the target logit continues past
    :math:`m_1\theta + m_2 = \pi` as :math:`(-1)^k\cos(m_1\theta + m_2) - 2k - m_3`,
    :math:`k = \lfloor (m_1\theta + m_2)/\pi\rfloor` (SphereFace's :math:`\psi`), continuous
    and decreasing on :math:`[0, \pi]`, so the loss always rewards a smaller target angle.
    ``"arcface"`` (only with ``m1 = 1``: its continuation jumps up otherwise), ``"easy"`` and
    ``"none"`` are the other fallbacks of :func:`marginkit.ops.combined_margin_logit`.

    Papers: J. Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition",
    CVPR 2019 (section 3.3, the combined margin); W. Liu et al., "SphereFace", CVPR 2017;
    H. Wang et al., "CosFace", CVPR 2018.

    Args:
        in_features: embedding dimension.
        num_classes: number of training classes.
        m1: multiplicative angular margin, ``> 0``.
        m2: additive angular margin in radians, ``[0, pi)``.
        m3: additive cosine margin, ``>= 0``.
        s: logit scale, or ``"auto"`` (AdaCos's :math:`\sqrt{2}\log(C-1)`).
        margin_fallback: ``"monotonic"`` (default), ``"arcface"``, ``"easy"`` or ``"none"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        memory_efficient: ``True`` / ``False`` / ``"auto"``: run the N×C step on the
            fused normalised-linear op (see :class:`~marginkit.losses.AngularMarginLoss`).
        grad_mode: ``"exact"`` or ``"straight_through"``.

    Example:
        >>> import torch
        >>> head = CombinedMarginHead(in_features=8, num_classes=3, m1=0.9, m2=0.4, m3=0.15, s=16.0)
        >>> head(torch.randn(4, 8), torch.tensor([0, 1, 2, 0])).ndim
        0
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        s: float | str = 64.0,
        margin_fallback: str = "monotonic",
        reduction: str = "mean",
        grad_mode: str = "exact",
        memory_efficient: bool | str = "auto",
    ) -> None:
        super().__init__(
            in_features, num_classes, s=s, reduction=reduction, memory_efficient=memory_efficient
        )
        self.m1 = check_finite_number("m1", m1, positive=True)
        self.m2 = check_margin("m2", m2, upper=math.pi)
        self.m3 = check_margin("m3", m3)
        check_option("margin_fallback", margin_fallback, MARGIN_FALLBACKS)
        check_arcface_fallback(margin_fallback, self.m1)
        check_option("grad_mode", grad_mode, GRAD_MODES)
        self.margin_fallback = margin_fallback
        self.grad_mode = grad_mode

    def target_logit(
        self, cos: Tensor, theta: Tensor, embeddings: Tensor, labels: Tensor
    ) -> Tensor:
        return combined_margin_logit(
            cos, theta, self.m1, self.m2, self.m3, self.margin_fallback, self.grad_mode
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, m1={self.m1:g}, m2={self.m2:g}, m3={self.m3:g}, "
            f"margin_fallback={self.margin_fallback!r}"
        )

    def combined_margin(self) -> tuple[float, float, float, str]:
        """This head's target logit as insightface's combined margin ``(m1, m2, m3, fallback)``.

        ``s·(cos(m1·θ + m2) − m3)`` with ``fallback`` the ``margin_fallback`` of
        :func:`marginkit.ops.combined_margin_logit`: what a class-sharded
        :class:`~marginkit.losses.ShardedMarginHead` needs to compute the same loss.
        """
        return (self.m1, self.m2, self.m3, self.margin_fallback)
