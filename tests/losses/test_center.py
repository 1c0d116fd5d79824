"""CenterLoss against λ/2·‖x − c_y‖² written out, its analytic gradients, errors, training."""

from __future__ import annotations

import pytest
import torch

from marginkit.losses import CenterLoss


def center_reference(x, centers, labels, lamda):
    """Per-row λ/2·Σ_d (x_id − c_{y_i} d)², with explicit loops, float64."""
    rows = []
    for i in range(x.shape[0]):
        total = 0.0
        for d in range(x.shape[1]):
            total += (float(x[i, d]) - float(centers[labels[i], d])) ** 2
        rows.append(0.5 * lamda * total)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_value_matches_formula(reduction):
    loss_fn = CenterLoss(5, 7, lamda=0.3, reduction=reduction).double()
    x, labels = torch.randn(11, 7, dtype=torch.float64), torch.randint(0, 5, (11,))
    rows = center_reference(x, loss_fn.centers.detach(), labels, 0.3)
    expected = {"mean": rows.mean(), "sum": rows.sum(), "none": rows}[reduction]
    torch.testing.assert_close(loss_fn(x, labels), expected, rtol=1e-12, atol=1e-12)


def test_gradients_match_analytic_formula():
    lamda, n = 0.7, 9
    loss_fn = CenterLoss(4, 3, lamda=lamda).double()
    x = torch.randn(n, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 3, 0, 0, 3, 1, 1])  # class 2 absent: no gradient on it
    loss_fn(x, labels).backward()
    centers = loss_fn.centers.detach()
    expected_x = lamda / n * (x.detach() - centers[labels])
    expected_c = torch.zeros_like(centers)
    for i in range(n):
        expected_c[labels[i]] -= lamda / n * (x.detach()[i] - centers[labels[i]])
    torch.testing.assert_close(x.grad, expected_x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss_fn.centers.grad, expected_c, rtol=1e-12, atol=1e-12)
    assert torch.all(loss_fn.centers.grad[2] == 0)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"lamda": -0.1}, ValueError, "`lamda`"),
        ({"lamda": float("nan")}, ValueError, "`lamda`"),
        ({"lamda": "big"}, TypeError, "`lamda`"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        CenterLoss(**{"num_classes": 3, "in_features": 4, **kwargs})
