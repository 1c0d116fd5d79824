"""``margin_fallback="arcface"`` is refused with ``m1 != 1`` by every public entry point.

insightface's continuation past θ* = (π − m2)/m1 is cos θ − m2·sin(m2) − m3; for m1 ≠ 1 the
target logit jumps *up* there, so the loss would fall as a sample leaves its class.
"""

from __future__ import annotations

import math

import pytest
import torch

from marginkit.losses import CombinedMarginHead, ShardedMarginHead
from marginkit.ops import combined_margin, linear_margin_cross_entropy, margin_cross_entropy
from tests.helpers.fallbacks import expect_refused


def insightface_target_logit(theta: float, m1: float, m2: float, m3: float) -> float:
    """The 'arcface' fallback written out in float64: the margin formula, then the continuation."""
    if m1 * theta + m2 <= math.pi:
        return math.cos(m1 * theta + m2) - m3
    return math.cos(theta) - m2 * math.sin(m2) - m3


def test_the_continuation_jumps_up_for_m1_other_than_one():
    m1, m2, m3 = 2.0, 0.3, 0.0
    theta_star = (math.pi - m2) / m1
    before = insightface_target_logit(theta_star - 1e-9, m1, m2, m3)
    after = insightface_target_logit(theta_star + 1e-9, m1, m2, m3)
    assert before == pytest.approx(-1.0) and after > before + 1.0  # the jump the check refuses
    # With m1 = 1 the continuation goes down (the loss keeps rising).
    theta_star = math.pi - m2
    assert insightface_target_logit(theta_star + 1e-9, 1.0, m2, m3) < insightface_target_logit(
        theta_star - 1e-9, 1.0, m2, m3
    )


def test_every_entry_point_refuses_it():
    cosines = torch.rand(4, 5, dtype=torch.float64) * 2 - 1
    label = torch.tensor([0, 1, 2, 3])
    embeddings, weight = torch.randn(4, 8), torch.randn(5, 8)
    with expect_refused():
        margin_cross_entropy(cosines, label, 2.0, 0.3, 0.0, margin_fallback="arcface")
    with expect_refused():
        combined_margin(cosines, label, 2.0, 0.3, 0.0, margin_fallback="arcface")
    with expect_refused():
        linear_margin_cross_entropy(
            embeddings, weight, label, 2.0, 0.3, 0.0, margin_fallback="arcface"
        )
    with expect_refused():
        ShardedMarginHead(8, 5, 2.0, 0.3, 0.0, margin_fallback="arcface")
    with expect_refused():
        CombinedMarginHead(8, 5, m1=2.0, m2=0.3, m3=0.0, margin_fallback="arcface")
    # m1 = 1 (insightface's own case) and the monotonic fallback stay allowed.
    margin_cross_entropy(cosines, label, 1.0, 0.3, 0.0, margin_fallback="arcface")
    margin_cross_entropy(cosines, label, 2.0, 0.3, 0.0, margin_fallback="monotonic")
