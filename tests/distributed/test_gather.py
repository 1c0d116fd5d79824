"""Gathers with gradients on 2 gloo ranks, and pair losses over the global batch.

Rank r holds rows [3r, 3r + 3) (rank 1 has only 2: uneven). With ``gather_embeddings=True``
every rank computes the loss of the whole batch, equal to one process's; the gradient returned
to a rank's rows is the sum over ranks of each rank's gradient (here ``world ×`` the one-process
gradient), which DDP's averaging turns back into the gradient of that loss.
"""

from __future__ import annotations

import pytest
import torch

from marginkit.distributed import all_gather_with_grad, gather_batch
from marginkit.losses import ContrastiveLoss, SurrogatePrecision, TripletLossWithMiner
from tests.helpers.spawn import run_on_ranks

pytestmark = pytest.mark.distributed

WORLD = 2
ROWS = [range(0, 3), range(3, 5)]


def global_batch():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1, 2])
    return features, labels


LOSSES = {
    "triplet": lambda gather: TripletLossWithMiner(margin=0.5, gather_embeddings=gather),
    "contrastive": lambda gather: ContrastiveLoss(margin=1.0, gather_embeddings=gather),
    "surrogate": lambda gather: SurrogatePrecision(k=2, gather_embeddings=gather),
}


def _rank_results(rank, world_size):
    features, labels = global_batch()
    rows = list(ROWS[rank])
    results = {}
    for name, make in LOSSES.items():
        local = features[rows].clone().requires_grad_()
        loss = make(True)(local, labels[rows])
        loss.backward()
        results[name] = (loss.detach(), local.grad)
    local = features[rows].clone().requires_grad_()
    gathered = all_gather_with_grad(local)
    (gathered * torch.arange(1.0, 6.0, dtype=torch.float64)[:, None]).sum().backward()
    results["gather"] = (gathered.detach(), local.grad)
    results["labels"] = gather_batch(features[rows], labels[rows])[1]
    return results


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    return run_on_ranks(_rank_results, WORLD, str(tmp_path_factory.mktemp("gloo")))


def test_uneven_gather_concatenates_and_sums_gradients(rank_results):
    features, labels = global_batch()
    for rank in range(WORLD):
        gathered, grad = rank_results[rank]["gather"]
        torch.testing.assert_close(gathered, features)
        assert rank_results[rank]["labels"].tolist() == labels.tolist()
        # d/dx of Σ_i (i+1)·x_i on each of the 2 ranks, summed: 2·(i+1) for the local rows.
        expected = 2.0 * torch.tensor([i + 1.0 for i in ROWS[rank]], dtype=torch.float64)
        torch.testing.assert_close(grad, expected[:, None].expand(-1, 4))


@pytest.mark.parametrize("name", LOSSES)
def test_pair_losses_over_the_global_batch_equal_one_process(rank_results, name):
    features, labels = global_batch()
    leaf = features.clone().requires_grad_()
    loss = LOSSES[name](False)(leaf, labels)
    loss.backward()
    for rank in range(WORLD):
        rank_loss, rank_grad = rank_results[rank][name]
        torch.testing.assert_close(rank_loss, loss.detach())
        torch.testing.assert_close(rank_grad, WORLD * leaf.grad[list(ROWS[rank])])
