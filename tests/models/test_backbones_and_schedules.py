"""MLP backbone and the cosine schedule against formulas written out here."""

from __future__ import annotations

import math

import pytest
import torch

from marginkit.models import cosine_with_warmup
from marginkit.models.backbones import MLP


def test_mlp_shapes_and_gradients():
    net = MLP(64, (32, 16), 8, dropout=0.1)
    out = net(torch.randn(5, 8, 8))  # image-shaped input is flattened
    assert out.shape == (5, 8) and net.embedding_dim == 8
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("kwargs", [{"embedding_dim": 0}, {"hidden": (0,)}, {"dropout": 1.0}])
def test_mlp_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        MLP(**kwargs)


def test_cosine_with_warmup_matches_formula():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.5)
    total, warmup, floor = 20, 4, 0.1
    scheduler = cosine_with_warmup(optimizer, total, warmup, floor)
    for step in range(total):
        if step < warmup:
            expected = 0.5 * (step + 1) / warmup
        else:
            progress = (step - warmup) / (total - warmup)
            expected = 0.5 * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"total_steps": 0},
        {"total_steps": 5, "warmup_steps": -1},
        {"total_steps": 5, "min_lr_ratio": 2.0},
    ],
)
def test_cosine_bad_arguments(kwargs):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError):
        cosine_with_warmup(optimizer, **kwargs)


def test_a_warmup_longer_than_the_run_is_shortened_with_a_warning():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.warns(UserWarning, match="warming up for 4 steps"):
        scheduler = cosine_with_warmup(optimizer, total_steps=5, warmup_steps=5)
    # Linear warm-up over the 4 steps: (t + 1) / 4 of the base rate.
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.025, 0.05, 0.075, 0.1])
