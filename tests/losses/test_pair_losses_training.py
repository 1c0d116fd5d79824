"""Each similarity pair / proxy loss trains an embedding on digits 0-5 that retrieves the unseen
digits 6-9 better than the raw inputs do. The inputs carry 64 class-independent noise dimensions
next to the 64 pixels (what a learned metric should learn to ignore), so the raw baseline is a
real one: cosine precision@1 of the raw vectors, leave-one-out over the 6-9 items."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from marginkit import losses

CASES = {
    "multi_similarity": (lambda: losses.MultiSimilarityLoss(), {}),
    "circle": (lambda: losses.CircleLoss(), {}),
    "supcon": (lambda: losses.SupConLoss(), {}),
    "ntxent": (lambda: losses.NTXentLoss(), {}),
    "proxy_anchor": (lambda: losses.ProxyAnchorLoss(6, 32), {}),
    "proxy_nca": (lambda: losses.ProxyNCALoss(6, 32), {}),
    "lifted_structure": (lambda: losses.LiftedStructureLoss(), {}),
    "generalized_lifted_structure": (lambda: losses.GeneralizedLiftedStructureLoss(), {}),
    "npairs": (lambda: losses.NPairsLoss(), {"steps": 80, "lr": 1e-2}),
    "fastap": (lambda: losses.FastAPLoss(), {}),
}


@functools.cache
def _noisy_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    images, digits = load_digits(return_X_y=True)
    x = torch.as_tensor(images, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0).clamp(min=1e-2)
    noise = 3.0 * torch.randn(len(x), 64, generator=torch.Generator().manual_seed(0))
    return torch.cat([x, noise], 1), torch.as_tensor(digits)


def precision_at_1(embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """Leave-one-out cosine nearest neighbour: the fraction whose neighbour shares the label."""
    unit = F.normalize(embeddings, dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(float("-inf"))
    return (labels[similarity.argmax(1)] == labels).float().mean().item()


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_retrieves_unseen_digits_better_than_raw_inputs(name):
    make, options = CASES[name]
    x, y = _noisy_digits()
    train, test = y < 6, y >= 6
    raw = precision_at_1(x[test], y[test])
    torch.manual_seed(0)
    loss_fn = make()
    net = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 32))
    optimizer = torch.optim.Adam(
        [*net.parameters(), *loss_fn.parameters()], lr=options.get("lr", 3e-3)
    )
    x_train, y_train = x[train], y[train]
    generator = torch.Generator().manual_seed(0)
    for _ in range(options.get("steps", 40)):  # P x K = 6 x 16 batches
        rows = torch.cat(
            [
                torch.nonzero(y_train == c)[:, 0][
                    torch.randperm(int((y_train == c).sum()), generator=generator)[:16]
                ]
                for c in range(6)
            ]
        )
        optimizer.zero_grad()
        loss = loss_fn(net(x_train[rows]), y_train[rows])
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        learned = precision_at_1(net(x[test]), y[test])
    assert learned > raw, (name, learned, raw)
