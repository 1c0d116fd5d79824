"""``memory_efficient=True`` (fused normalised-linear op) gives the heads' loss and gradients.

The reference is each head with ``memory_efficient=False`` (cosines + target_logsumexp), itself
tested against float64 formulas in the per-head tests; here both paths run in float64.
"""

from __future__ import annotations

import pytest
import torch

from marginkit.losses import (
    AdaFaceLoss,
    ArcFaceLoss,
    CombinedMarginHead,
    CosFaceLoss,
    MagFaceLoss,
    NormFaceLoss,
    SphereFaceLoss,
    SubCenterArcFaceLoss,
)
from marginkit.losses.angular_margin import MEMORY_EFFICIENT_MIN_CLASSES

HEADS = {
    "arcface": lambda **kw: ArcFaceLoss(6, 11, m=0.5, s=16.0, **kw),
    "arcface_smoothing": lambda **kw: ArcFaceLoss(6, 11, s=16.0, smoothing_epsilon=0.2, **kw),
    "arcface_categories": lambda **kw: ArcFaceLoss(
        6, 11, s=16.0, smoothing_epsilon=0.3, label2category={c: c % 3 for c in range(11)}, **kw
    ),
    "cosface": lambda **kw: CosFaceLoss(6, 11, m=0.35, s=16.0, **kw),
    "combined": lambda **kw: CombinedMarginHead(6, 11, 1.1, 0.3, 0.1, s=16.0, **kw),
    "sphereface": lambda **kw: SphereFaceLoss(6, 11, m=3, s=16.0, **kw),
    "normface": lambda **kw: NormFaceLoss(6, 11, s=16.0, **kw),
    "adaface": lambda **kw: AdaFaceLoss(6, 11, s=16.0, **kw),
    "magface": lambda **kw: MagFaceLoss(6, 11, s=16.0, l_a=0.5, u_a=5.0, **kw),
}


def _loss_and_grads(head, embeddings, labels):
    leaf = embeddings.clone().requires_grad_()
    loss = head(leaf, labels)
    loss.backward()
    return loss.detach(), leaf.grad, head.weight.grad


@pytest.mark.parametrize("name", HEADS)
def test_fused_linear_path_equals_cosine_path(name):
    torch.manual_seed(0)
    reference = HEADS[name](memory_efficient=False).double()
    fused = HEADS[name](memory_efficient=True).double()
    fused.load_state_dict(reference.state_dict())
    assert fused.uses_memory_efficient() and not reference.uses_memory_efficient()
    embeddings = torch.randn(9, 6, dtype=torch.float64) * 3
    labels = torch.tensor([0, 3, 10, 2, 2, 7, 5, 9, 1])
    expected = _loss_and_grads(reference, embeddings, labels)
    actual = _loss_and_grads(fused, embeddings, labels)
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_auto_switches_at_the_documented_class_count():
    assert not ArcFaceLoss(4, MEMORY_EFFICIENT_MIN_CLASSES - 1).uses_memory_efficient()
    assert ArcFaceLoss(4, MEMORY_EFFICIENT_MIN_CLASSES).uses_memory_efficient()
    # Heads whose cosines are not one normalised product per class never switch.
    assert not SubCenterArcFaceLoss(4, 5000).uses_memory_efficient()


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_bad_memory_efficient_is_rejected(value):
    with pytest.raises(ValueError, match="`memory_efficient` must be True, False or 'auto'"):
        ArcFaceLoss(4, 3, memory_efficient=value)
