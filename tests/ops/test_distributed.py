"""The model-parallel path (``group=``) with two gloo processes on CPU against one process.

Rank 0 holds classes [0, 4), rank 1 classes [4, 12) (uneven shards). Both ranks see the same rows
and global labels; each must return the single-process loss, its slice of the single-process
softmax and its slice of the single-process gradient. One spawn runs every case (process start-up
dominates the cost); the workers send their results back through a queue.
"""

from __future__ import annotations

import os
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from marginkit.ops import margin_cross_entropy
from tests.helpers.run_if import has_module
from tests.ops.float64_reference import margin_ce_reference

pytestmark = pytest.mark.distributed

SHARDS = (4, 8)
N_ROWS = 10
# name: (margins, scale, options)
CASES = {
    "arcface_mean": ((1.0, 0.5, 0.0), 64.0, {}),
    "combined_sum_arcface_fallback": (
        (1.2, 0.3, 0.1),
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
# The Triton kernels too (in the interpreter, set in the workers before their first import).
TRITON = has_module("triton") and not torch.cuda.is_available()


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


def _worker(rank: int, world_size: int, store_path: str, queue) -> None:
    try:
        if TRITON:
            os.environ["TRITON_INTERPRET"] = "1"
        torch.set_num_threads(1)
        # A file store: no port to pick, so nothing to race other test runs for.
        dist.init_process_group(
            "gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size
        )
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
                if TRITON:
                    options = {**options, "impl": "triton"}
                    results[name, dtype, "triton"] = run_case(
                        shard, label, margins, scale, options, group
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
        queue.put((rank, results))
    except BaseException:  # report anything to the parent instead of hanging it
        queue.put((rank, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    context = mp.get_context("spawn")
    queue = context.Queue()
    world_size = len(SHARDS)
    store_path = str(tmp_path_factory.mktemp("gloo") / "store")
    processes = [
        context.Process(target=_worker, args=(rank, world_size, store_path, queue))
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    results = {}
    try:
        for _ in range(world_size):
            rank, payload = queue.get(timeout=120)
            assert not isinstance(payload, str), f"rank {rank} failed:\n{payload}"
            results[rank] = payload
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    return results


@pytest.mark.parametrize(
    "impl",
    [
        None,
        pytest.param(
            "triton",
            marks=[
                pytest.mark.triton,
                pytest.mark.skipif(not TRITON, reason="triton is not installed"),
            ],
        ),
    ],
)
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
