"""The Triton linear backward (two passes, no atomics) against the chunked-torch kernels.

Under Triton's interpreter on CPU tensors, float16 runs the GPU's code path (only bfloat16
upcasts there); each test runs both the interpreter's tiles and the GPU's (the launch parameters
are the only difference the interpreter is allowed).
"""

from __future__ import annotations

import pytest
import torch

from marginkit.ops import _linear_cpu
from tests.ops.test_linear_margin_cross_entropy import make_inputs, run_op
from tests.ops.triton_setup import DEVICE, TRITON_MARKS

pytestmark = [
    *TRITON_MARKS,
    pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning"),
]

# (BLOCK_N, BLOCK_C, BLOCK_D, num_warps): the interpreter's and the GPU's float16 tiles, spelled
# out here rather than read from the module.
TILE_SETS = {"interpreter": (16, 16, 16, 1), "gpu-fp16": (64, 128, 64, 8)}


def relative_error(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def kernel_inputs(n_rows, n_classes, dim, dtype, seed=0):
    embeddings, weight, label = make_inputs(n_rows, n_classes, dim, dtype=dtype, seed=seed)
    acc = torch.float32 if dtype != torch.float64 else torch.float64
    inv_e = 1 / embeddings.to(acc).norm(dim=1)
    inv_w = 1 / weight.to(acc).norm(dim=1)
    target = label.clone()
    target[1] = -1  # a row without a target here
    return embeddings, weight, inv_e, inv_w, target


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomics", "two-pass"])
@pytest.mark.parametrize("tiles", list(TILE_SETS.values()), ids=list(TILE_SETS))
@pytest.mark.parametrize("loss_scale", [1e-5, 1e-3, 1.0, 2.0**10], ids=str)
def test_float16_backward_matches_torch_at_every_loss_scale(loss_scale, tiles, deterministic):
    """exp(s·x − R) ∈ [0, 1] goes into the dot and c is applied in fp32: nothing flushes."""
    from marginkit.ops import _linear_triton

    n_rows, scale = 40, 32.0
    embeddings, weight, inv_e, inv_w, target = kernel_inputs(n_rows, 70, 48, torch.float16)
    args = (embeddings, weight, inv_e, inv_w, target)
    lse = _linear_cpu.row_logsumexp_linear(*args, scale)
    # A mean loss's coefficient s·g/N, times the loss scale, varying a little per row.
    coef = scale * loss_scale / n_rows * torch.linspace(0.5, 1.0, n_rows)
    want = _linear_cpu.row_logsumexp_linear_backward(*args, lse, coef, scale)
    got = _linear_triton.row_logsumexp_linear_backward(
        *(t.to(DEVICE) for t in args),
        lse.to(DEVICE),
        coef.to(DEVICE),
        scale,
        tiles=tiles,
        deterministic=deterministic,
    )
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float16
    for tensor, reference in zip(got, want, strict=True):
        assert relative_error(tensor.cpu(), reference) < 1e-2


@pytest.mark.parametrize("tiles", list(TILE_SETS.values()), ids=list(TILE_SETS))
def test_backward_is_bitwise_repeatable_under_deterministic_algorithms(tiles):
    from marginkit.ops import _linear_triton

    embeddings, weight, inv_e, inv_w, target = kernel_inputs(20, 37, 19, torch.float32)
    args = tuple(t.to(DEVICE) for t in (embeddings, weight, inv_e, inv_w, target))
    lse = _linear_triton.row_logsumexp_linear(*args, 16.0, tiles=tiles)
    coef = torch.linspace(-1.0, 1.0, 20, device=DEVICE)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = _linear_triton.row_logsumexp_linear_backward(*args, lse, coef, 16.0, tiles=tiles)
        second = _linear_triton.row_logsumexp_linear_backward(*args, lse, coef, 16.0, tiles=tiles)
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    want = _linear_cpu.row_logsumexp_linear_backward(
        embeddings, weight, inv_e, inv_w, target, lse.cpu(), coef.cpu(), 16.0
    )
    for tensor, reference in zip(first, want, strict=True):
        torch.testing.assert_close(tensor.cpu(), reference, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomics", "two-pass"])
def test_backward_paths_match_torch_in_float64(deterministic):
    from marginkit.ops import _linear_triton

    embeddings, weight, inv_e, inv_w, target = kernel_inputs(18, 50, 20, torch.float64)
    args = (embeddings, weight, inv_e, inv_w, target)
    lse = _linear_cpu.row_logsumexp_linear(*args, 20.0)
    coef = torch.linspace(-1.0, 1.0, 18, dtype=torch.float64)
    want = _linear_cpu.row_logsumexp_linear_backward(*args, lse, coef, 20.0)
    got = _linear_triton.row_logsumexp_linear_backward(
        *args, lse, coef, 20.0, tiles=(16, 32, 16, 1), deterministic=deterministic
    )
    for tensor, reference in zip(got, want, strict=True):
        torch.testing.assert_close(tensor, reference, rtol=1e-12, atol=1e-12)


def test_backward_splits_of_the_embedding_pass_match_one_split():
    from marginkit.ops import _linear_triton

    embeddings, weight, inv_e, inv_w, target = kernel_inputs(18, 50, 20, torch.float64)
    args = (embeddings, weight, inv_e, inv_w, target)
    lse = _linear_cpu.row_logsumexp_linear(*args, 20.0)
    coef = torch.linspace(-1.0, 1.0, 18, dtype=torch.float64)
    want = _linear_cpu.row_logsumexp_linear_backward(*args, lse, coef, 20.0)
    for splits in (1, 2, 4):
        got = _linear_triton.row_logsumexp_linear_backward(
            *args, lse, coef, 20.0, tiles=(16, 16, 16, 1), num_splits=splits, deterministic=True
        )
        for tensor, reference in zip(got, want, strict=True):
            torch.testing.assert_close(tensor, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=str)
def test_transposed_weight_and_strided_embeddings_need_no_copy(dtype):
    """A (D, C) weight seen as (C, D) and embeddings of column stride 2: the same result."""
    embeddings, weight, label = make_inputs(12, 21, 16, dtype=dtype)
    transposed = weight.T.contiguous().T  # strides (1, C)
    wide = torch.zeros(12, 32, dtype=dtype)
    wide[:, ::2] = embeddings
    strided = wide[:, ::2]  # strides (32, 2)
    assert transposed.stride() == (1, 21) and strided.stride() == (32, 2)
    on = {"impl": "triton"}
    dense = run_op(embeddings.to(DEVICE), weight.to(DEVICE), label.to(DEVICE), scale=16.0, **on)
    result = run_op(strided.to(DEVICE), transposed.to(DEVICE), label.to(DEVICE), scale=16.0, **on)
    # Only the torch-side reductions (norms, autograd) see the layout: last-bit differences.
    tolerance = {"rtol": 1e-12, "atol": 1e-14} if dtype == torch.float64 else {}
    for got, want in zip(result, dense, strict=True):
        torch.testing.assert_close(got, want, **tolerance)


def test_triton_ops_pass_opcheck():
    """The launchers are torch.library.triton_ops: schema, fake kernels and dispatch check out.

    The interpreter's kernels cannot be traced into an AOT graph (``wrap_triton`` returns them
    unwrapped), so there ``test_aot_dispatch_dynamic`` is left to ``benchmarks/gpu.py``, which
    runs every check with compiled kernels.
    """
    from marginkit.ops import _linear_triton  # noqa: F401 (registers the ops)

    checks = ("test_schema", "test_autograd_registration", "test_faketensor")
    if DEVICE == "cuda":
        checks = (*checks, "test_aot_dispatch_dynamic")

    embeddings, weight, inv_e, inv_w, target = kernel_inputs(9, 13, 8, torch.float32)
    args = tuple(t.to(DEVICE) for t in (embeddings, weight, inv_e, inv_w, target))
    torch.library.opcheck(
        torch.ops.marginkit.triton_linear_logsumexp.default,
        (*args, 8.0, None, None),
        test_utils=checks,
    )
    lse = torch.ops.marginkit.triton_linear_logsumexp(*args, 8.0, None, None)
    coef = torch.linspace(-1.0, 1.0, 9, device=DEVICE)
    torch.library.opcheck(
        torch.ops.marginkit.triton_linear_logsumexp_backward.default,
        (*args, lse, coef, 8.0, None, None, True),
        test_utils=checks,
    )


def test_cosine_triton_ops_pass_opcheck():
    from marginkit.ops import _triton  # noqa: F401 (registers the ops)

    checks = ("test_schema", "test_autograd_registration", "test_faketensor")
    if DEVICE == "cuda":
        checks = (*checks, "test_aot_dispatch_dynamic")
    logits = torch.rand(6, 11, device=DEVICE) * 2 - 1
    target = torch.tensor([0, 3, -1, 10, 5, 2], device=DEVICE)
    categories = (torch.arange(11, device=DEVICE) % 3, torch.arange(6, device=DEVICE) % 3)
    args = (logits, target, 4.0, True, *categories, None, 2)
    torch.library.opcheck(
        torch.ops.marginkit.triton_row_statistics.default, args, test_utils=checks
    )
    lse, _ = torch.ops.marginkit.triton_row_statistics(*args)
    ones = torch.ones(6, device=DEVICE)
    torch.library.opcheck(
        torch.ops.marginkit.triton_write_row_softmax.default,
        (logits, target, lse, ones, -ones, 4.0, torch.empty_like(logits), ones, *categories, 16, 1),
        test_utils=checks,
    )
