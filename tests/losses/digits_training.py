"""A few optimisation steps of a loss on scikit-learn's digits (0-5): the "it trains" check."""

from __future__ import annotations

import functools

import torch
from torch import nn


@functools.cache
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    images, digits = load_digits(return_X_y=True)
    keep = digits < 6
    x = torch.as_tensor(images[keep], dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0).clamp(min=1e-2)
    return x, torch.as_tensor(digits[keep], dtype=torch.long)


def train_on_digits(
    loss_fn: nn.Module,
    steps: int = 20,
    lr: float = 1e-2,
    embedding_dim: int = 16,
    rows: int | None = 512,
) -> list[float]:
    """Train a small MLP (and the loss's own parameters) full-batch; return the loss per step.

    The loss is built for ``embedding_dim``-dimensional embeddings and 6 classes; ``rows`` keeps
    only the first rows (every class appears within the first few dozen).
    """
    torch.manual_seed(0)
    x, y = _digits()
    x, y = x[:rows], y[:rows]
    backbone = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, embedding_dim))
    optimizer = torch.optim.Adam([*backbone.parameters(), *loss_fn.parameters()], lr=lr)
    history = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(backbone(x), y)
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    return history


def assert_trains(history: list[float], factor: float = 0.9) -> None:
    """Every loss finite and the last three steps below ``factor`` × the first three."""
    assert all(torch.isfinite(torch.tensor(history))), history
    first, last = sum(history[:3]) / 3, sum(history[-3:]) / 3
    assert last < factor * first, history
