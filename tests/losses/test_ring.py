"""RingLoss against λ/2·(‖x‖ − R)² written out, its analytic gradients, R's start, errors."""

from __future__ import annotations

import math

import pytest
import torch

from marginkit.losses import RingLoss
from tests.losses.digits_training import assert_trains, train_on_digits


def ring_reference(x, radius, lamda):
    """Per-row λ/2·(√Σ_d x_id² − R)², explicit loops, float64."""
    rows = []
    for i in range(x.shape[0]):
        norm = math.sqrt(sum(float(v) ** 2 for v in x[i]))
        rows.append(0.5 * lamda * (norm - radius) ** 2)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_value_matches_formula(reduction):
    loss_fn = RingLoss(lamda=0.2, r_init=3.0, reduction=reduction).double()
    x = 2.0 * torch.randn(10, 5, dtype=torch.float64)
    rows = ring_reference(x, 3.0, 0.2)
    expected = {"mean": rows.mean(), "sum": rows.sum(), "none": rows}[reduction]
    torch.testing.assert_close(loss_fn(x, torch.zeros(10, dtype=torch.long)), expected)
    assert loss_fn.last_logs == {"radius": 3.0}


def test_gradients_match_analytic_formula():
    lamda, n = 0.5, 8
    loss_fn = RingLoss(lamda=lamda, r_init=1.5).double()
    x = torch.randn(n, 4, dtype=torch.float64, requires_grad=True)
    loss_fn(x, torch.zeros(n, dtype=torch.long)).backward()
    norms = x.detach().norm(dim=1)
    expected_x = lamda / n * ((norms - 1.5) / norms)[:, None] * x.detach()
    expected_r = -lamda / n * (norms - 1.5).sum()
    torch.testing.assert_close(x.grad, expected_x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss_fn.radius.grad, expected_r, rtol=1e-12, atol=1e-12)


def test_zero_embedding_has_a_finite_gradient():
    loss_fn = RingLoss(lamda=1.0, r_init=1.0)
    x = torch.zeros(2, 3, requires_grad=True)
    loss_fn(x).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(loss_fn.radius.grad)


def test_radius_starts_at_the_first_batch_mean_norm_once():
    loss_fn = RingLoss(lamda=1.0)
    x = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    first = loss_fn(x)
    assert loss_fn.radius.item() == pytest.approx(3.0)  # mean of norms 5 and 1
    torch.testing.assert_close(first, ring_reference(x, 3.0, 1.0).mean().float())
    loss_fn(10.0 * x)  # a later batch does not move R
    assert loss_fn.radius.item() == pytest.approx(3.0)
    # A resumed run keeps the initialised R instead of re-initialising from its first batch.
    resumed = RingLoss(lamda=1.0)
    resumed.load_state_dict(loss_fn.state_dict())
    resumed(10.0 * x)
    assert resumed.radius.item() == pytest.approx(3.0)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"lamda": -1.0}, ValueError, "`lamda`"),
        ({"r_init": 0.0}, ValueError, "`r_init`"),
        ({"r_init": float("inf")}, ValueError, "`r_init`"),
        ({"r_init": "one"}, TypeError, "`r_init`"),
        ({"reduction": None}, ValueError, "`reduction`"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        RingLoss(**kwargs)


def test_bad_inputs():
    loss_fn = RingLoss(r_init=1.0)
    with pytest.raises(ValueError, match="`embeddings`"):
        loss_fn(torch.randn(4))
    with pytest.raises(ValueError, match="`embeddings`"):
        loss_fn(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="`labels`"):
        loss_fn(torch.randn(2, 3), torch.tensor([0, 1, 2]))


def test_trains_on_digits():
    assert_trains(train_on_digits(RingLoss(lamda=1.0, r_init=1.0)))
