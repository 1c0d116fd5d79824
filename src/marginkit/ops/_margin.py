r"""The margin arithmetic: the one place where a target angle becomes a margin logit.

Every margin head, the fused ops (cosine and normalised-linear), the sharded head and the kernel
tests go through these functions. They are plain, differentiable torch on **N-length vectors**
(one target per row), so the kernels that touch the N×C matrix never see the margin, and a
margin may be any differentiable function of per-row tensors (per-sample margins, feature norms,
running statistics).

The pieces:

* :func:`target_angle`: the target cosine and angle of unit embeddings against unit target
  weights, :math:`\theta = \operatorname{atan2}(\lVert \hat w - (\hat w\cdot\hat x)\hat x\rVert,
  \hat w\cdot\hat x)`, whose gradient is exact for every angle (down to 0, where it is finite);
* :func:`arccos_floored`: the angle when only the cosine is known (the logits-only ops), with
  the derivative :math:`-1/\sin\theta` floored at ``SIN2_THETA_FLOOR``;
* :func:`combined_margin_logit`: :math:`\phi = \cos(m_1\theta + m_2) - m_3` with the fallbacks
  and grad modes (:func:`combined_margin_of_cosines`: the same from the cosines alone);
* :func:`margin_softmax_loss`: the per-row loss from the row log-sum-exp of the non-target
  logits and the target logit, with optional label smoothing.

Why angles: for ArcFace :math:`d\phi/dx = m_1\sin(m_1\theta + m_2)/\sin\theta`, and the cosine
:math:`x = \hat w\cdot\hat e` has a gradient of size :math:`\sin\theta`. Differentiating
:math:`\arccos x` multiplies the two in floating point and loses everything as
:math:`\theta \to 0` (:math:`1 - x` is below the rounding of :math:`x`). Differentiating
:math:`\operatorname{atan2}` of the sine computed from vectors keeps full precision, because the
:math:`1/\sin\theta` cancels analytically.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MARGIN_FALLBACKS = ("none", "arcface", "easy", "monotonic")
GRAD_MODES = ("exact", "straight_through")

# Floor on sin(θ)² when differentiating arccos of a bare cosine: d θ / d cos θ = -1 / sin θ is
# infinite at cos θ = ±1. With the floor, |d θ / d cos θ| ≤ 1e3, so the gradient stays finite
# for a perfectly aligned (or opposed) pair while being exact for |cos θ| ≤ 1 - 5e-7. Only the
# logits-only ops need it: heads that see embeddings use :func:`target_angle`, which is exact.
SIN2_THETA_FLOOR = 1e-6

Margin = float | Tensor


def target_angle(unit_embeddings: Tensor, unit_target_weights: Tensor) -> tuple[Tensor, Tensor]:
    r"""Cosine and angle between unit embeddings and their unit target weights, row by row.

    .. math::
        c_i = \hat w_i \cdot \hat x_i, \qquad
        \theta_i = \operatorname{atan2}\big(\lVert \hat w_i - c_i \hat x_i \rVert,\ c_i\big)

    The sine comes from the vector difference, not from :math:`\sqrt{1 - c^2}`, so both the value
    and the gradient of :math:`\theta` are accurate to rounding for every angle, down to
    :math:`10^{-8}` rad in float64 and at exactly 0 and :math:`\pi`, where the gradient is
    finite (0 through the sine).

    Args:
        unit_embeddings: ``(N, D)`` L2-normalised embeddings.
        unit_target_weights: ``(N, D)`` the L2-normalised class weight of each row's label.

    Returns:
        ``(cos, theta)``, both ``(N,)`` and differentiable.

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
        >>> w = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
        >>> cos, theta = target_angle(x, w)
        >>> round(cos.item(), 6), round(theta.item(), 6)
        (0.0, 1.570796)
    """
    cos = (unit_embeddings * unit_target_weights).sum(dim=1)
    perpendicular = unit_target_weights - cos[:, None] * unit_embeddings
    sin = torch.linalg.vector_norm(perpendicular, dim=1)
    return cos, torch.atan2(sin, cos)


def arccos_floored(cos: Tensor) -> Tensor:
    r"""``arccos`` of a cosine, with the derivative :math:`-1/\sqrt{\max(1 - x^2, 10^{-6})}`.

    The value is :math:`\arccos(\operatorname{clamp}(x, -1, 1))`. The gradient flows even
    where rounding put :math:`x` slightly outside :math:`[-1, 1]` (it is the floored slope
    there), so a logit that rounding pushed to 1.0000001 still learns.

    Example:
        >>> import torch
        >>> x = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
        >>> arccos_floored(x).sum().backward()
        >>> x.grad.tolist()
        [-1000.0, -1.0]
    """
    clamped = cos.detach().clamp(-1.0, 1.0)
    theta = torch.acos(clamped)
    slope = -torch.rsqrt(torch.clamp(1.0 - clamped * clamped, min=SIN2_THETA_FLOOR))
    return theta + slope * (cos - cos.detach())


def combined_margin_logit(
    cos: Tensor,
    theta: Tensor,
    m1: Margin = 1.0,
    m2: Margin = 0.0,
    m3: Margin = 0.0,
    margin_fallback: str = "none",
    grad_mode: str = "exact",
) -> Tensor:
    r"""The combined-margin target logit (before the scale) of each row.

    .. math:: \phi = \cos(m_1 \theta + m_2) - m_3

    ArcFace is ``(1, m, 0)``, CosFace ``(1, 0, m)``, insightface's combined margin all three.
    The margins may be floats or per-row tensors (AdaFace, MagFace). Fallbacks replace the
    formula where it stops decreasing in :math:`\theta`:

    * ``"none"``: the pure formula (Paddle / OneFlow semantics);
    * ``"arcface"``: where :math:`m_1\theta + m_2 > \pi`, the continuation
      :math:`\cos\theta - m_2 \sin m_2 - m_3` (insightface's ``ArcMarginProduct``,
      ``easy_margin=False``);
    * ``"easy"``: the margin only where :math:`\cos\theta > 0`, elsewhere :math:`\phi = \cos\theta`;
    * ``"monotonic"``: SphereFace's piecewise :math:`\psi`, generalised to every combination,
      :math:`(-1)^k \cos(m_1\theta + m_2) - 2k - m_3` with
      :math:`k = \lfloor (m_1\theta + m_2)/\pi \rfloor`: continuous and decreasing on
      :math:`[0, \pi]` for any :math:`m_1 > 0, m_2 \ge 0`.

    ``grad_mode="straight_through"`` keeps the value but passes the gradient of
    :math:`\cos\theta` (insightface's arcface_torch: the margin is added without gradient).

    Args:
        cos: ``(N,)`` target cosines (differentiable; used by the fallbacks and the
            straight-through gradient).
        theta: ``(N,)`` target angles, from :func:`target_angle` or :func:`arccos_floored`.
        m1: multiplicative angular margin (> 0).
        m2: additive angular margin, radians.
        m3: additive cosine margin.
        margin_fallback: one of :data:`MARGIN_FALLBACKS`.
        grad_mode: ``"exact"`` or ``"straight_through"``.

    Returns:
        ``(N,)`` :math:`\phi`, in the dtype of ``theta``.

    Example:
        >>> import math, torch
        >>> theta = torch.tensor([math.pi / 2], dtype=torch.float64)
        >>> phi = combined_margin_logit(torch.cos(theta), theta, m2=0.5)
        >>> round(phi.item(), 6) == round(math.cos(math.pi / 2 + 0.5), 6)
        True
    """
    angle = m1 * theta + m2
    if margin_fallback == "monotonic":
        k = torch.floor(angle.detach() / math.pi)
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
        phi = sign * torch.cos(angle) - 2.0 * k - m3
    else:
        phi = torch.cos(angle) - m3
        if margin_fallback == "arcface":
            continuation = cos - m2 * _sin(m2) - m3
            phi = torch.where(angle > math.pi, continuation, phi)
        elif margin_fallback == "easy":
            phi = torch.where(cos > 0, phi, cos)
    if grad_mode == "straight_through":
        phi = cos + (phi - cos).detach()
    return phi


def combined_margin_of_cosines(
    cos_target: Tensor,
    m1: float,
    m2: float,
    m3: float,
    margin_fallback: str,
    grad_mode: str,
) -> Tensor:
    r"""φ of N target cosines (the logits-only ops: the angle from :func:`arccos_floored`).

    Evaluated in float64 whatever the cosines' dtype (N values: free), so that the
    :math:`1/\sin\theta` of the derivative does not amplify float32 rounding of θ near ±1; the
    result has the dtype of ``cos_target``. With ``m1 = 1, m2 = 0`` the margin is
    :math:`x - m_3` (with any fallback) whose slope is exactly 1: the straight-through
    gradient, which is then exact, is used instead of the floored ``arccos`` (finite and exact
    at :math:`x = \pm 1`).

    Example:
        >>> import torch
        >>> phi = combined_margin_of_cosines(torch.tensor([0.0]), 1.0, 0.0, 0.35, "none", "exact")
        >>> round(phi.item(), 6)
        -0.35
    """
    if m1 == 1.0 and m2 == 0.0:
        grad_mode = "straight_through"
    cos64 = cos_target.double()
    phi = combined_margin_logit(
        cos64, arccos_floored(cos64), m1, m2, m3, margin_fallback, grad_mode
    )
    return phi.to(cos_target.dtype)


def _sin(value: Margin) -> Margin:
    return torch.sin(value) if isinstance(value, Tensor) else math.sin(value)


def margin_softmax_loss(
    lse_rest: Tensor,
    target_logit: Tensor,
    *,
    smoothing: float = 0.0,
    row_sum_rest: Tensor | None = None,
    smoothing_classes: Tensor | float | None = None,
) -> Tensor:
    r"""Per-row softmax cross-entropy from the non-target log-sum-exp and the target logit.

    With :math:`R_i = \log\sum_{j\ne t_i} e^{z_{ij}}` and the target logit :math:`z_{it_i}`,

    .. math::
        \ell_i = \log(e^{z_{it_i}} + e^{R_i}) - z_{it_i} = \operatorname{softplus}(R_i - z_{it_i}),

    computed as ``logaddexp(d, 0)`` :math:`= \max(d, 0) + \log(1 + e^{-|d|})` (exact for tiny
    losses, 0 when :math:`R = -\infty`, gradient :math:`\sigma(d)`). With label smoothing :math:`\varepsilon` over :math:`K` classes (the
    target distribution puts :math:`1 - \varepsilon + \varepsilon/K` on the label and
    :math:`\varepsilon/K` on the other :math:`K - 1` classes),

    .. math::
        \ell_i = L_i - (1 - \varepsilon + \tfrac{\varepsilon}{K}) z_{it_i}
        - \tfrac{\varepsilon}{K} S_i, \qquad L_i = \log(e^{z_{it_i}} + e^{R_i}),

    where :math:`S_i` = ``row_sum_rest`` is the sum of the other :math:`K - 1` logits.

    Args:
        lse_rest: ``(N,)`` log-sum-exp of the scaled non-target logits.
        target_logit: ``(N,)`` scaled target logit :math:`s\,\phi`.
        smoothing: :math:`\varepsilon \in [0, 1)`.
        row_sum_rest: ``(N,)`` sum of the *scaled* non-target logits that share the smoothing
            (needed when ``smoothing > 0``).
        smoothing_classes: :math:`K` (a float, or an ``(N,)`` tensor when it varies by row).

    Returns:
        ``(N,)`` losses.

    Example:
        >>> import torch
        >>> lse_rest, target = torch.tensor([0.0]), torch.tensor([0.0])
        >>> margin_softmax_loss(lse_rest, target)  # two equal logits: log 2
        tensor([0.6931])
    """
    gap = lse_rest - target_logit
    # logaddexp(d, 0) = max(d, 0) + log1p(exp(-|d|)) with the gradient sigmoid(d) everywhere;
    # the same expression written with clamp and abs has the gradient 1, not 1/2, at d = 0.
    loss = torch.logaddexp(gap, torch.zeros_like(gap))
    if smoothing == 0.0:
        return loss
    if row_sum_rest is None or smoothing_classes is None:
        raise ValueError("`row_sum_rest` and `smoothing_classes` are needed when smoothing > 0")
    # L − (1 − ε + ε/K) z_t − (ε/K) S = ℓ + z_t − (1 − ε + ε/K) z_t − (ε/K) S.
    share = smoothing / smoothing_classes
    return loss + (smoothing - share) * target_logit - share * row_sum_rest
