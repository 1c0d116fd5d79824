"""The model-parallel path (``group=``) with two gloo processes on CPU against one process.

``margin_cross_entropy`` and ``target_logsumexp`` (with the categorised row sum).

Rank 0 holds classes [0, 4), rank 1 classes [4, 12) (uneven shards). Both ranks see the same rows
and global labels; each must return the single-process loss, its slice of the single-process
softmax and its slice of the single-process gradient. One spawn runs every case (process start-up
dominates the cost; ``tests/helpers/spawn.py``).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from marginkit.ops import margin_cross_entropy, target_logsumexp
from tests.helpers.float64_margin import margin_ce_reference
from tests.helpers.spawn import run_on_ranks
from tests.ops.triton_setup import CPU_IMPLS, CPU_TRITON

pytestmark = pytest.mark.distributed

SHARDS = (4, 8)
N_ROWS = 10
# name: (margins, scale, options)
CASES = {
    "arcface_mean": ((1.0, 0.5, 0.0), 64.0, {}),
    "combined_sum_arcface_fallback": (
        (1.0, 0.3, 0.1),
        30.0,
        {"reduction": "sum", "margin_fallback": "arcface"},
    ),
    "cosface_none_straight_through": (
        (1.0, 0.0, 0.35),
        64.0,
        {"reduction": "none", "grad_mode": "straight_through"},
    ),
    "sphereface_easy": ((2.0, 0.0, 0.0), 16.0, {"margin_fallback": "easy"}),
}
DTYPES = (torch.float64, torch.float32)


def inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The full (N, 12) cosines and labels: targets on both shards, ±1 cosines, ignored rows."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.rand(N_ROWS, sum(SHARDS), generator=generator, dtype=torch.float64) * 2 - 1
    label = torch.tensor([0, 3, 4, 11, -100, 7, 2, 5, -100, 9])
    logits[0, 0] = 1.0
    logits[2, 4] = -1.0
    logits[5, :] = 0.25  # every class equal, target on rank 1
    return logits.to(dtype), label


def run_case(logits, label, margins, scale, options, group=None):
    leaf = logits.detach().clone().requires_grad_()
    loss, softmax = margin_cross_entropy(
        leaf, label, *margins, scale, group=group, return_softmax=True, **options
    )
    loss.backward(torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape))
    return loss.detach(), softmax, leaf.grad


COLUMN_CATEGORY = torch.tensor([0, 1, 2, 0, 1, 1, 2, 0, 0, 2, 1, 0])
ROW_CATEGORY = torch.tensor([0, 0, 1, 0, 2, 2, 2, 1, 1, 1])


def run_target_logsumexp(logits, label, columns=slice(None), group=None, impl=None):
    """``target_logsumexp`` with the categorised row sum, and the gradient of a weighted sum."""
    leaf = logits.detach().clone().requires_grad_()
    lse_rest, cos_target, row_sum = target_logsumexp(
        leaf,
        label,
        16.0,
        group,
        row_sum=True,
        column_category=COLUMN_CATEGORY[columns],
        row_category=ROW_CATEGORY,
        impl=impl,
    )
    weights = torch.linspace(-1.0, 2.0, 3 * N_ROWS, dtype=lse_rest.dtype).reshape(3, N_ROWS)
    ((weights[0] * lse_rest + weights[1] * cos_target + weights[2] * row_sum).sum()).backward()
    return lse_rest.detach(), cos_target.detach(), row_sum.detach(), leaf.grad


def _rank_results(rank: int, _world_size: int) -> dict:
    """Every case on this rank's shard of the classes (run in a spawned gloo process)."""
    begin = sum(SHARDS[:rank])
    columns = slice(begin, begin + SHARDS[rank])
    results = {}
    for dtype in DTYPES:
        logits, label = inputs(dtype)
        shard = logits[:, columns].contiguous()
        for name, (margins, scale, options) in CASES.items():
            # The default group and an explicit subgroup (both ranks).
            group = dist.group.WORLD if name == "arcface_mean" else dist.new_group([0, 1])
            results[name, dtype] = run_case(shard, label, margins, scale, options, group)
            if CPU_TRITON:
                options = {**options, "impl": "triton"}
                results[name, dtype, "triton"] = run_case(
                    shard, label, margins, scale, options, group
                )
        for impl in (None, "triton") if CPU_TRITON else (None,):
            results["target_logsumexp", dtype, impl] = run_target_logsumexp(
                shard, label, columns, dist.group.WORLD, impl
            )
    # A global label out of range raises on every rank (no rank is left waiting).
    bad_label = torch.tensor([0, 12] + [1] * (N_ROWS - 2))
    try:
        margin_cross_entropy(
            inputs(torch.float64)[0][:, columns], bad_label, group=dist.group.WORLD
        )
        results["error"] = None
    except ValueError as error:
        results["error"] = str(error)
    # Still in step afterwards.
    results["after_error"] = run_case(
        inputs(torch.float64)[0][:, columns].contiguous(),
        inputs(torch.float64)[1],
        (1.0, 0.5, 0.0),
        64.0,
        {},
        dist.group.WORLD,
    )
    return results


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    return run_on_ranks(_rank_results, len(SHARDS), str(tmp_path_factory.mktemp("gloo")))


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CASES)
def test_group_matches_single_process(rank_results, name, dtype, impl):
    margins, scale, options = CASES[name]
    logits, label = inputs(dtype)
    loss, softmax, grad = run_case(logits, label, margins, scale, options)
    # float32: the shards sum in a different order than one row does.
    tolerance = (
        {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 1e-4}
    )
    for rank in range(len(SHARDS)):
        begin = sum(SHARDS[:rank])
        columns = slice(begin, begin + SHARDS[rank])
        key = (name, dtype) if impl is None else (name, dtype, impl)
        rank_loss, rank_softmax, rank_grad = rank_results[rank][key]
        torch.testing.assert_close(rank_loss, loss, **tolerance)
        torch.testing.assert_close(rank_softmax, softmax[:, columns], **tolerance)
        torch.testing.assert_close(rank_grad, grad[:, columns], **tolerance)


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_target_logsumexp_group_matches_single_process(rank_results, dtype, impl):
    # Uneven shards, ignored rows (label -100), the row sum restricted to the row's category.
    logits, label = inputs(dtype)
    lse_rest, cos_target, row_sum, grad = run_target_logsumexp(logits, label)
    tolerance = (
        {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 1e-4}
    )
    for rank in range(len(SHARDS)):
        begin = sum(SHARDS[:rank])
        columns = slice(begin, begin + SHARDS[rank])
        rank_lse, rank_cos, rank_sum, rank_grad = rank_results[rank][
            "target_logsumexp", dtype, impl
        ]
        torch.testing.assert_close(rank_lse, lse_rest, **tolerance)
        torch.testing.assert_close(rank_cos, cos_target, **tolerance)
        torch.testing.assert_close(rank_sum, row_sum, **tolerance)
        torch.testing.assert_close(rank_grad, grad[:, columns], **tolerance)


def test_single_process_result_matches_float64_reference():
    margins, scale, options = CASES["combined_sum_arcface_fallback"]
    logits, label = inputs(torch.float64)
    loss, softmax, grad = run_case(logits, label, margins, scale, options)
    ref_loss, ref_softmax, ref_grad = margin_ce_reference(
        logits,
        label,
        *margins,
        scale,
        **options,
        grad_output=torch.linspace(0.5, 1.5, 1, dtype=torch.float64).reshape(()),
    )
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(softmax, ref_softmax)
    torch.testing.assert_close(grad, ref_grad)


def test_global_label_range_is_checked_on_every_rank(rank_results):
    for rank in range(len(SHARDS)):
        message = rank_results[rank]["error"]
        assert message is not None
        assert "[0, 12)" in message and "got 12 at row 1" in message


def test_ranks_stay_in_step_after_a_label_error(rank_results):
    logits, label = inputs(torch.float64)
    loss, _softmax, _grad = run_case(logits, label, (1.0, 0.5, 0.0), 64.0, {})
    for rank in range(len(SHARDS)):
        torch.testing.assert_close(rank_results[rank]["after_error"][0], loss)
