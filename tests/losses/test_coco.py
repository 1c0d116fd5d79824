"""COCOLoss against softmax(α·ĉ_k·x̂) written out in float64, gradients, errors, training."""

from __future__ import annotations

import math

import pytest
import torch

from marginkit.losses import COCOLoss


def coco_reference(x, centroids, labels, alpha):
    """Per-row −log softmax(α·cos)[y], rows and classes looped, differentiable, float64."""
    rows = []
    for i in range(x.shape[0]):
        unit_x = x[i] / torch.sqrt((x[i] ** 2).sum())
        logits = []
        for k in range(centroids.shape[0]):
            unit_c = centroids[k] / torch.sqrt((centroids[k] ** 2).sum())
            logits.append(alpha * (unit_x * unit_c).sum())
        logits = torch.stack(logits)
        top = logits.max().detach()
        rows.append(top + torch.log(torch.exp(logits - top).sum()) - logits[labels[i]])
    return torch.stack(rows)


@pytest.mark.parametrize("alpha", [6.25, 1.0, 40.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_value_and_gradients_match_formula(alpha, reduction):
    head = COCOLoss(6, 5, alpha=alpha, reduction=reduction).double()
    x = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 4, 2])
    value = head(x, labels)
    ref_x = x.detach().clone().requires_grad_()
    ref_w = head.weight.detach().clone().requires_grad_()
    rows = coco_reference(ref_x, ref_w, labels, alpha)
    expected = {"mean": rows.mean(), "sum": rows.sum(), "none": rows}[reduction]
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    weights = torch.linspace(0.5, 1.5, 8, dtype=torch.float64) if reduction == "none" else 1.0
    (value * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(head.weight.grad, ref_w.grad, rtol=1e-9, atol=1e-12)


def test_logits_are_scaled_cosines():
    head = COCOLoss(4, 3, alpha=2.0).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    expected = torch.empty(5, 3, dtype=torch.float64)
    for i in range(5):
        for k in range(3):
            w = head.weight.detach()[k]
            expected[i, k] = 2.0 * float(x[i] @ w) / (float(x[i].norm()) * float(w.norm()))
    torch.testing.assert_close(head.logits(x), expected)
    assert head.weight.shape == (3, 4)


def test_uniform_logits_give_log_num_classes():
    head = COCOLoss(2, 4, alpha=5.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.0, 1.0], [0.0, -1.0], [0.0, 2.0], [0.0, -3.0]]))
    # x ⟂ every centroid: all logits 0, loss log 4
    assert head(torch.tensor([[1.0, 0.0]]), torch.tensor([2])).item() == pytest.approx(
        math.log(4), rel=1e-6
    )


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"alpha": 0.0}, ValueError, "`alpha`"),
        ({"alpha": float("inf")}, ValueError, "`alpha`"),
        ({"alpha": "6"}, TypeError, "`alpha`"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        COCOLoss(**{"in_features": 4, "num_classes": 3, **kwargs})
