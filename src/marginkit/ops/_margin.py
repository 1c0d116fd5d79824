"""The margin arithmetic: the one place where a target cosine becomes a margin logit.

Every margin head, the fused op (CPU and Triton paths), the reference implementation and the
kernel tests go through :func:`margin_target`. It works on N-length vectors (one target cosine
per row), so the kernels that touch the N×C matrix never need to know which margin is in use.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MARGIN_FALLBACKS = ("none", "arcface", "easy")
GRAD_MODES = ("exact", "straight_through")

# Floor on sin(θ)² when differentiating through arccos: d θ / d cos θ = -1 / sin θ is infinite at
# cos θ = ±1. With the floor, |d θ / d cos θ| ≤ 1e3, so the gradient stays finite for a perfectly
# aligned (or opposed) pair while being exact for |cos θ| ≤ 1 - 5e-7.
SIN2_THETA_FLOOR = 1e-6


def margin_target(
    cos_target: Tensor,
    m1: float = 1.0,
    m2: float = 0.0,
    m3: float = 0.0,
    margin_fallback: str = "none",
    grad_mode: str = "exact",
) -> tuple[Tensor, Tensor]:
    r"""Apply the combined margin to target cosines and return the value and its derivative.

    .. math::
        \phi(x) = \cos(m_1 \theta + m_2) - m_3, \qquad \theta = \arccos(\operatorname{clamp}(x, -1, 1))

    and :math:`\phi'(x) = m_1 \sin(m_1\theta + m_2) / \sin\theta` (with :math:`\sin^2\theta`
    floored at ``SIN2_THETA_FLOOR`` so the derivative stays finite at :math:`x = \pm 1`).

    Fallbacks (where the formula is replaced, the derivative there is 1):

    * ``"none"``: the pure formula (Paddle / OneFlow semantics).
    * ``"arcface"``: where :math:`m_1\theta + m_2 > \pi` use the monotonic continuation
      :math:`x - m_2 \sin m_2 - m_3` (insightface's ``ArcMarginProduct`` with
      ``easy_margin=False``).
    * ``"easy"``: apply the margin only where :math:`x > 0`, elsewhere :math:`\phi(x) = x`.

    ``grad_mode="straight_through"`` reports :math:`\phi'(x) = 1` everywhere (insightface's
    arcface_torch: the margin is added without gradient).

    Args:
        cos_target: target cosines, any shape, floating point. Computation happens in the
            input's dtype (callers upcast half precision to float32 first).
        m1: multiplicative angular margin (SphereFace-style), ``m1 > 0``.
        m2: additive angular margin (ArcFace), in radians.
        m3: additive cosine margin (CosFace / AM-Softmax).
        margin_fallback: one of ``"none"``, ``"arcface"``, ``"easy"``.
        grad_mode: ``"exact"`` or ``"straight_through"``.

    Returns:
        ``(phi, dphi_dcos)``, both shaped like ``cos_target``.

    Example:
        >>> import math, torch
        >>> phi, dphi = margin_target(torch.tensor([0.0], dtype=torch.float64), m2=0.5)
        >>> round(phi.item(), 6) == round(math.cos(math.pi / 2 + 0.5), 6)
        True
    """
    x = cos_target.clamp(-1.0, 1.0)
    plain = m1 == 1.0 and m2 == 0.0
    if plain:
        # Pure cosine margin (CosFace) or no margin at all: no trigonometry needed.
        phi = x - m3
        dphi = torch.ones_like(x)
    else:
        theta = torch.acos(x)
        angle = m1 * theta + m2
        phi = torch.cos(angle) - m3
        sin_theta = torch.sqrt(torch.clamp(1.0 - x * x, min=SIN2_THETA_FLOOR))
        dphi = m1 * torch.sin(angle) / sin_theta
        if margin_fallback == "arcface":
            use_fallback = angle > math.pi
            phi = torch.where(use_fallback, x - m2 * math.sin(m2) - m3, phi)
            dphi = torch.where(use_fallback, torch.ones_like(dphi), dphi)
    if margin_fallback == "easy":
        use_fallback = x <= 0
        phi = torch.where(use_fallback, x, phi)
        dphi = torch.where(use_fallback, torch.ones_like(dphi), dphi)
    if grad_mode == "straight_through":
        dphi = torch.ones_like(dphi)
    return phi, dphi
