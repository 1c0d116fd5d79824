"""The ``group=`` path of the normalised-linear op: two gloo processes against one process.

Rank 0 holds classes [0, 5), rank 1 classes [5, 12) of the weight (uneven shards); both ranks
see the same embeddings and global labels. Each rank must return the single-process loss and
its slice of the single-process weight gradient; the embedding gradients of the ranks (each
rank's share) must sum to the single-process one. One spawn runs every case
(``tests/helpers/spawn.py``).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from marginkit.ops.linear_margin_cross_entropy import (
    linear_margin_cross_entropy,
    linear_target_logsumexp,
)
from tests.helpers.float64_margin import linear_margin_ce_reference
from tests.helpers.spawn import run_on_ranks
from tests.ops.test_linear_margin_cross_entropy import make_inputs
from tests.ops.triton_setup import CPU_IMPLS, CPU_TRITON

pytestmark = pytest.mark.distributed

SHARDS = (5, 7)
N_ROWS, DIM = 10, 6
CASES = {
    "arcface_mean": ((1.0, 0.5, 0.0), 64.0, {}),
    "combined_sum_monotonic": (
        (1.2, 0.3, 0.1),
        30.0,
        {"reduction": "sum", "margin_fallback": "monotonic"},
    ),
    "cosface_none_straight_through": (
        (1.0, 0.0, 0.35),
        64.0,
        {"reduction": "none", "grad_mode": "straight_through", "chunk_size": 2},
    ),
}


def inputs():
    """Embeddings, the full (12, D) weight and labels with targets on both shards, ignored rows."""
    embeddings, weight, _ = make_inputs(N_ROWS, sum(SHARDS), DIM, seed=5)
    label = torch.tensor([0, 4, 5, 11, -100, 7, 2, 6, -100, 9])
    return embeddings, weight, label


def column_categories():
    return torch.arange(sum(SHARDS)) % 3, torch.tensor([0, 1, 2, 2, 0, 1, 2, 0, 1, 0])


def run_loss(embeddings, weight, label, margins, scale, options, group=None, impl=None):
    emb = embeddings.detach().clone().requires_grad_()
    wei = weight.detach().clone().requires_grad_()
    loss = linear_margin_cross_entropy(
        emb, wei, label, *margins, scale, group=group, impl=impl, **options
    )
    loss.backward(torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape))
    return loss.detach(), emb.grad, wei.grad


def run_statistics(embeddings, weight, label, column_category, row_category, group=None):
    emb = embeddings.detach().clone().requires_grad_()
    wei = weight.detach().clone().requires_grad_()
    out = linear_target_logsumexp(
        emb,
        wei,
        label,
        12.0,
        group,
        row_sum=True,
        column_category=column_category,
        row_category=row_category,
    )
    coefficients = torch.linspace(-1.0, 1.0, N_ROWS, dtype=torch.float64)
    (out.lse_rest @ coefficients + out.cos_target.sum() * 2 + out.row_sum.sum() * 3).backward()
    return (*(tensor.detach() for tensor in out), emb.grad, wei.grad)


def _rank_results(rank: int, _world_size: int) -> dict:
    """Every case on this rank's shard of the weight (run in a spawned gloo process)."""
    begin = sum(SHARDS[:rank])
    columns = slice(begin, begin + SHARDS[rank])
    embeddings, weight, label = inputs()
    shard = weight[columns].contiguous()
    results = {}
    for name, (margins, scale, options) in CASES.items():
        group = dist.group.WORLD if name == "arcface_mean" else dist.new_group([0, 1])
        results[name] = run_loss(embeddings, shard, label, margins, scale, options, group)
        if CPU_TRITON:
            results[name, "triton"] = run_loss(
                embeddings, shard, label, margins, scale, options, group, impl="triton"
            )
    column_category, row_category = column_categories()
    results["statistics"] = run_statistics(
        embeddings, shard, label, column_category[columns], row_category, dist.group.WORLD
    )
    try:
        linear_margin_cross_entropy(
            embeddings,
            shard,
            torch.tensor([0, 12] + [1] * (N_ROWS - 2)),
            group=dist.group.WORLD,
        )
        results["error"] = None
    except ValueError as error:
        results["error"] = str(error)
    return results


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    return run_on_ranks(_rank_results, len(SHARDS), str(tmp_path_factory.mktemp("gloo")))


def assert_ranks_match(rank_results, key, loss, grad_embeddings, grad_weight):
    tolerance = {"rtol": 1e-10, "atol": 1e-12}
    summed = torch.zeros_like(grad_embeddings)
    for rank in range(len(SHARDS)):
        begin = sum(SHARDS[:rank])
        rank_loss, rank_grad_embeddings, rank_grad_weight = rank_results[rank][key]
        torch.testing.assert_close(rank_loss, loss, **tolerance)
        torch.testing.assert_close(
            rank_grad_weight, grad_weight[begin : begin + SHARDS[rank]], **tolerance
        )
        summed += rank_grad_embeddings
    torch.testing.assert_close(summed, grad_embeddings, **tolerance)


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("name", CASES)
def test_sharded_weight_matches_one_process(rank_results, name, impl):
    margins, scale, options = CASES[name]
    embeddings, weight, label = inputs()
    expected = run_loss(embeddings, weight, label, margins, scale, options)
    key = name if impl is None else (name, impl)
    assert_ranks_match(rank_results, key, *expected)


def test_one_process_matches_the_linear_margin_ce_reference():
    margins, scale, options = CASES["combined_sum_monotonic"]
    embeddings, weight, label = inputs()
    loss, grad_embeddings, grad_weight = run_loss(
        embeddings, weight, label, margins, scale, options
    )
    reference = linear_margin_ce_reference(
        embeddings,
        weight,
        label,
        *margins,
        scale,
        reduction="sum",
        margin_fallback="monotonic",
        grad_output=torch.tensor(0.5, dtype=torch.float64),
    )
    for got, want in zip((loss, grad_embeddings, grad_weight), reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_statistics_with_categories_match_one_process(rank_results):
    embeddings, weight, label = inputs()
    column_category, row_category = column_categories()
    expected = run_statistics(embeddings, weight, label, column_category, row_category)
    tolerance = {"rtol": 1e-10, "atol": 1e-12}
    summed = torch.zeros_like(expected[3])
    for rank in range(len(SHARDS)):
        begin = sum(SHARDS[:rank])
        got = rank_results[rank]["statistics"]
        for value, want in zip(got[:3], expected[:3], strict=True):
            torch.testing.assert_close(value, want, **tolerance)
        torch.testing.assert_close(got[4], expected[4][begin : begin + SHARDS[rank]], **tolerance)
        summed += got[3]
    torch.testing.assert_close(summed, expected[3], **tolerance)


def test_global_label_range_is_checked_on_every_rank(rank_results):
    for rank in range(len(SHARDS)):
        message = rank_results[rank]["error"]
        assert message is not None and "[0, 12)" in message and "got 12 at row 1" in message
