"""The Triton kernels of the fused margin cross-entropy against a float64 reference written here.

Without a GPU the kernels run in Triton's interpreter on CPU tensors. Triton fixes the mode when
``@triton.jit`` decorates a function — ``triton.language``'s own when ``triton`` is first
imported, ours when ``marginkit.ops._triton`` is — so ``TRITON_INTERPRET=1`` must be set before
either. This module sets it at collection time (enough when it runs alone); in a full run an
earlier module may already have imported triton (Lightning does), and then the tests are skipped
with that reason unless ``tests/conftest.py`` or the environment sets it first.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from torch import Tensor

if not torch.cuda.is_available():  # before anything in this module imports triton
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="marginkit's Triton kernels need the optional `triton`")

from marginkit.ops import _triton as triton_ops

INTERPRETED = triton_ops.interpreter_enabled()
DEVICE = torch.device("cpu" if INTERPRETED else "cuda")

requires_kernels = pytest.mark.skipif(
    not INTERPRETED and not torch.cuda.is_available(),
    reason="no CUDA GPU, and triton was imported before TRITON_INTERPRET=1 was set, so its "
    "kernels cannot run in the interpreter (set it in the environment or tests/conftest.py)",
)
pytestmark = [
    pytest.mark.triton,
    # The interpreter evaluates log(0) on purpose (rows with every column excluded) and on
    # padding lanes; numpy warns about it.
    pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning"),
]

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
SCALES = [1.0, 30.0, 64.0]
# (N, C, targets): None draws random in-range targets with every third row replaced by one of
# "no target here" values (-100 = ignore_index, -1, C and C + 7 = another rank's shard).
SHAPES = [
    pytest.param(17, 4099, None, id="17x4099"),
    pytest.param(3, 5, None, id="3x5"),
    pytest.param(2, 129, [128, 5], id="2x129"),
    pytest.param(1, 1, [0], id="1x1-all-excluded"),
    pytest.param(1, 1, [-100], id="1x1-ignored"),
    pytest.param(4, 1, [0, -1, 1, 0], id="4x1"),
    pytest.param(4, 6, [6, 7, 100, -100], id="4x6-targets-elsewhere"),
]
OUT_OF_SHARD = (-100, -1, 0, 7)  # the last two are offsets from C


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def make_cosines(n_rows: int, n_cols: int, dtype: torch.dtype) -> Tensor:
    return (torch.rand(n_rows, n_cols, dtype=torch.float64) * 2 - 1).to(dtype).to(DEVICE)


def make_targets(n_rows: int, n_cols: int, targets: list[int] | None) -> Tensor:
    if targets is not None:
        return torch.tensor(targets, dtype=torch.int64, device=DEVICE)
    drawn = torch.randint(0, n_cols, (n_rows,), dtype=torch.int64)
    for row in range(1, n_rows, 3):
        special = OUT_OF_SHARD[(row // 3) % len(OUT_OF_SHARD)]
        drawn[row] = special if special < 0 else n_cols + special
    return drawn.to(DEVICE)


def reference_lse(logits: Tensor, target_col: Tensor, scale: float) -> Tensor:
    """float64 ``log Σ_{j ≠ t_i} exp(scale · x_ij)``."""
    scaled = logits.double().cpu() * scale
    cols = torch.arange(logits.shape[1])
    excluded = cols[None, :] == target_col.cpu()[:, None]
    return torch.logsumexp(scaled.masked_fill(excluded, float("-inf")), dim=1)


def reference_softmax(
    logits: Tensor,
    target_col: Tensor,
    lse: Tensor,
    row_coef: Tensor,
    target_value: Tensor,
    scale: float,
    out_dtype: torch.dtype,
) -> Tensor:
    """float64 ``c_i exp(scale · x_ij − lse_i)``, ``v_i`` at the target (``out_dtype`` unused)."""
    cols = torch.arange(logits.shape[1])
    is_target = cols[None, :] == target_col.cpu()[:, None]
    values = row_coef.double().cpu()[:, None] * torch.exp(
        logits.double().cpu() * scale - lse.double().cpu()[:, None]
    )
    return torch.where(is_target, target_value.double().cpu()[:, None], values)


def assert_lse_close(actual: Tensor, expected: Tensor, logits_dtype: torch.dtype) -> None:
    assert actual.dtype == accumulation_dtype(logits_dtype)
    assert actual.shape == expected.shape
    if logits_dtype == torch.float64:
        rtol, atol = 1e-12, 1e-12
    else:  # fp32 maths: the interpreter stays within 1e-7, ex2.approx on a GPU adds ~2 ulp
        rtol, atol = 1e-6, 1e-6
    torch.testing.assert_close(actual.cpu().double(), expected, rtol=rtol, atol=atol)


# Relative error of the kernel's maths (fp32: s·x rounds by up to 64 · 2⁻²⁴ ≈ 4e-6 in the exponent
# at s = 64; 5e-6 is measured), and of rounding to the output dtype (one ulp, since the kernel and
# the reference each round once); atol covers the subnormal ranges.
MATH_RTOL = {torch.float32: 2e-5, torch.float64: 1e-12}
MATH_ATOL = {torch.float32: 1e-36, torch.float64: 1e-300}  # fp32 subnormals lose precision
STORE_RTOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1.2e-7, torch.float64: 0.0}
STORE_ATOL = {
    torch.float16: 1e-7,
    torch.bfloat16: 1e-36,
    torch.float32: 1e-36,
    torch.float64: 1e-300,
}


def assert_softmax_close(actual: Tensor, expected: Tensor, logits_dtype: torch.dtype) -> None:
    out_dtype = actual.dtype
    assert torch.isfinite(actual).all(), "the written matrix has inf or NaN (or an unwritten cell)"
    rtol = MATH_RTOL[accumulation_dtype(logits_dtype)] + STORE_RTOL[out_dtype]
    torch.testing.assert_close(
        actual.cpu().double(),
        expected.to(out_dtype).double(),
        rtol=rtol,
        atol=max(STORE_ATOL[out_dtype], MATH_ATOL[accumulation_dtype(logits_dtype)]),
    )


def row_inputs(lse: Tensor, acc_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """lse, row_coef (some negative) and target_value in the accumulation dtype."""
    n_rows = lse.shape[0]
    row_coef = torch.rand(n_rows, dtype=torch.float64) * 4 - 1
    target_value = torch.randn(n_rows, dtype=torch.float64)
    return tuple(t.to(acc_dtype).to(DEVICE) for t in (lse, row_coef, target_value))


def unwritten(n_rows: int, n_cols: int, dtype: torch.dtype) -> Tensor:
    """An output buffer full of NaN, so a cell the kernel does not write fails the comparison."""
    return torch.full((n_rows, n_cols), float("nan"), dtype=dtype, device=DEVICE)


# ---------------------------------------------------------------------------------------------
# row_logsumexp_excluding_target
# ---------------------------------------------------------------------------------------------


@requires_kernels
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n_rows", "n_cols", "targets"), SHAPES)
def test_row_logsumexp_matches_reference(n_rows, n_cols, targets, dtype, scale):
    logits = make_cosines(n_rows, n_cols, dtype)
    target_col = make_targets(n_rows, n_cols, targets)
    lse = triton_ops.row_logsumexp_excluding_target(logits, target_col, scale)
    assert_lse_close(lse, reference_lse(logits, target_col, scale), dtype)


@requires_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_row_logsumexp_all_excluded_row_is_minus_inf(dtype):
    logits = torch.tensor([[0.25], [0.25], [0.25]], dtype=dtype, device=DEVICE)
    target_col = torch.tensor([0, -100, 1], device=DEVICE)
    lse = triton_ops.row_logsumexp_excluding_target(logits, target_col, 64.0)
    assert lse[0].item() == float("-inf")
    assert lse[1:].tolist() == [16.0, 16.0]


@requires_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_row_logsumexp_of_cosines_at_plus_minus_one_is_finite(dtype):
    signs = torch.randint(0, 2, (5, 300), dtype=torch.float64) * 2 - 1
    logits = signs.to(dtype).to(DEVICE)
    target_col = make_targets(5, 300, None)
    lse = triton_ops.row_logsumexp_excluding_target(logits, target_col, 64.0)
    assert torch.isfinite(lse).all()
    assert_lse_close(lse, reference_lse(logits, target_col, 64.0), dtype)


@requires_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("n_rows", "n_cols", "targets", "block_c", "num_splits"),
    [
        pytest.param(17, 4099, None, 512, 3, id="17x4099-3-splits"),
        pytest.param(17, 4099, None, 1024, 1, id="17x4099-5-tiles"),
        # The last split is one column, the target: an all-excluded partial (m, s) = (-inf, 0).
        pytest.param(2, 129, [128, 5], 64, 3, id="2x129-empty-split"),
        # The first tile of the row holds nothing but the target.
        pytest.param(2, 17, [0, 16], 16, 2, id="2x17-excluded-first-split"),
        pytest.param(1, 1, [0], 16, 4, id="1x1-all-excluded"),
        pytest.param(3, 200, None, 16, 100, id="3x200-split-per-tile"),
    ],
)
def test_row_logsumexp_tiles_and_splits(n_rows, n_cols, targets, block_c, num_splits, dtype):
    logits = make_cosines(n_rows, n_cols, dtype)
    target_col = make_targets(n_rows, n_cols, targets)
    lse = triton_ops.row_logsumexp_excluding_target(
        logits, target_col, 30.0, block_c=block_c, num_splits=num_splits
    )
    assert_lse_close(lse, reference_lse(logits, target_col, 30.0), dtype)


@requires_kernels
def test_row_logsumexp_float64_keeps_an_inexact_scale():
    """``scale`` reaches the kernel as two fp32 halves, so fp64 is not limited to fp32's scale."""
    scale = 1 / 0.07
    logits = make_cosines(4, 37, torch.float64)
    target_col = make_targets(4, 37, None)
    lse = triton_ops.row_logsumexp_excluding_target(logits, target_col, scale)
    assert_lse_close(lse, reference_lse(logits, target_col, scale), torch.float64)


@requires_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("layout", ["column-slice", "transposed"])
def test_row_logsumexp_strided_logits(layout, dtype):
    n_rows, n_cols = 6, 37
    if layout == "column-slice":  # row stride 40, storage offset 3: unaligned rows
        logits = make_cosines(n_rows, n_cols + 3, dtype)[:, 3:]
    else:  # column stride 6: the launcher makes it contiguous
        logits = make_cosines(n_cols, n_rows, dtype).t()
    assert not logits.is_contiguous()
    target_col = make_targets(n_rows, n_cols, None)
    lse = triton_ops.row_logsumexp_excluding_target(logits, target_col, 64.0)
    assert_lse_close(lse, reference_lse(logits, target_col, 64.0), dtype)


@requires_kernels
def test_row_logsumexp_empty():
    target_col = torch.zeros(3, dtype=torch.int64, device=DEVICE)
    no_cols = triton_ops.row_logsumexp_excluding_target(
        torch.empty(3, 0, device=DEVICE), target_col, 64.0
    )
    assert no_cols.tolist() == [float("-inf")] * 3
    no_rows = triton_ops.row_logsumexp_excluding_target(
        torch.empty(0, 5, dtype=torch.float64, device=DEVICE), target_col[:0], 64.0
    )
    assert no_rows.shape == (0,) and no_rows.dtype == torch.float64


# ---------------------------------------------------------------------------------------------
# write_row_softmax
# ---------------------------------------------------------------------------------------------


def run_write(logits, target_col, scale, out_dtype, **launch):
    acc_dtype = accumulation_dtype(logits.dtype)
    lse = reference_lse(logits, target_col, scale)
    lse, row_coef, target_value = row_inputs(lse, acc_dtype)
    out = unwritten(*logits.shape, out_dtype)
    args = (logits, target_col, lse, row_coef, target_value, scale, out)
    if launch:
        returned = triton_ops.write_row_softmax(*args, **launch)
    else:
        returned = triton_ops.write_row_softmax(*args)
    assert returned is out
    expected = reference_softmax(*args[:-1], out_dtype)
    return out, expected


@requires_kernels
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n_rows", "n_cols", "targets"), SHAPES)
def test_write_row_softmax_matches_reference(n_rows, n_cols, targets, dtype, scale):
    logits = make_cosines(n_rows, n_cols, dtype)
    target_col = make_targets(n_rows, n_cols, targets)
    out, expected = run_write(logits, target_col, scale, dtype)
    assert_softmax_close(out, expected, dtype)


@requires_kernels
@pytest.mark.parametrize(
    ("dtype", "out_dtype"),
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float16),
        (torch.float32, torch.bfloat16),
        (torch.float32, torch.float64),
        (torch.float64, torch.float32),
        (torch.float64, torch.float16),
    ],
)
def test_write_row_softmax_other_out_dtype(dtype, out_dtype):
    logits = make_cosines(17, 300, dtype)
    target_col = make_targets(17, 300, None)
    out, expected = run_write(logits, target_col, 64.0, out_dtype)
    assert_softmax_close(out, expected, dtype)


@requires_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("n_rows", "n_cols", "targets", "block_c", "num_splits"),
    [
        pytest.param(17, 4099, None, 512, 3, id="17x4099-3-splits"),
        pytest.param(2, 129, [128, 5], 64, 3, id="2x129-target-alone-in-split"),
        pytest.param(3, 200, None, 16, 100, id="3x200-split-per-tile"),
    ],
)
def test_write_row_softmax_tiles_and_splits(n_rows, n_cols, targets, block_c, num_splits, dtype):
    logits = make_cosines(n_rows, n_cols, dtype)
    target_col = make_targets(n_rows, n_cols, targets)
    out, expected = run_write(
        logits, target_col, 30.0, dtype, block_c=block_c, num_splits=num_splits
    )
    assert_softmax_close(out, expected, dtype)


@requires_kernels
@pytest.mark.parametrize("dtype", DTYPES)
def test_write_row_softmax_of_cosines_at_plus_minus_one(dtype):
    signs = torch.randint(0, 2, (5, 300), dtype=torch.float64) * 2 - 1
    logits = signs.to(dtype).to(DEVICE)
    target_col = make_targets(5, 300, None)
    out, expected = run_write(logits, target_col, 64.0, dtype)
    assert_softmax_close(out, expected, dtype)


@requires_kernels
@pytest.mark.parametrize(
    ("dtype", "out_dtype"),
    [
        (torch.float16, torch.float16),
        (torch.float32, torch.float16),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_write_row_softmax_overflow_is_inf_not_clamped(dtype, out_dtype):
    """Values past the output dtype's range are ±inf (as torch's kernels round), never clipped."""
    n_rows, n_cols = 4, 70
    logits = torch.zeros(n_rows, n_cols, dtype=dtype, device=DEVICE)
    target_col = torch.tensor([3, -100, 69, 0], device=DEVICE)
    acc_dtype = accumulation_dtype(dtype)
    # e · huge: past float16's 65504 when stored, past float32's (so bfloat16's) range at once.
    huge = 1e5 if out_dtype == torch.float16 else torch.finfo(torch.float32).max
    # exp(0 − lse) = e in rows 0 and 1, 1/69 in row 2, 1 in row 3.
    lse = torch.tensor([-1.0, -1.0, math.log(69), 0.0], dtype=acc_dtype, device=DEVICE)
    row_coef = torch.tensor([huge, -huge, 1.0, 0.5], dtype=acc_dtype, device=DEVICE)
    target_value = torch.tensor([huge, 0.0, -math.inf, math.inf], dtype=acc_dtype, device=DEVICE)
    out = unwritten(n_rows, n_cols, out_dtype)
    triton_ops.write_row_softmax(logits, target_col, lse, row_coef, target_value, 64.0, out)
    out = out.cpu().double()
    assert (out[0, torch.arange(n_cols) != 3] == math.inf).all()  # c · p overflows off target
    assert (out[1] == -math.inf).all()  # a row without a target column
    assert out[2, 69].item() == -math.inf and out[3, 0].item() == math.inf
    expected = torch.full((69,), 1 / 69, dtype=torch.float64).to(out_dtype).double()
    torch.testing.assert_close(out[2, :69], expected, rtol=STORE_RTOL[out_dtype], atol=0.0)
    assert (out[3, 1:] == 0.5).all()


def reference_row_sum(logits, target_col, column_category=None, row_category=None):
    """float64 ``Σ_{j ≠ t_i, κ(j) = ρ_i} x_ij``."""
    x = logits.double().cpu()
    cols = torch.arange(x.shape[1])
    keep = cols[None, :] != target_col.cpu()[:, None]
    if column_category is not None:
        keep &= column_category.cpu()[None, :] == row_category.cpu()[:, None]
    return (x * keep).sum(dim=1)


@requires_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("categories", [False, True])
@pytest.mark.parametrize(
    ("block_c", "num_splits"), [(None, None), (16, 3)], ids=["one-split", "3-splits"]
)
def test_row_statistics_row_sum(dtype, categories, block_c, num_splits):
    n_rows, n_cols = 7, 45
    logits = make_cosines(n_rows, n_cols, dtype)
    target_col = make_targets(n_rows, n_cols, None)
    column_category = row_category = None
    if categories:
        column_category = torch.randint(0, 3, (n_cols,), device=DEVICE)
        row_category = torch.randint(0, 3, (n_rows,), device=DEVICE)
    lse, total = triton_ops.row_statistics_excluding_target(
        logits,
        target_col,
        30.0,
        True,
        column_category,
        row_category,
        block_c=block_c,
        num_splits=num_splits,
    )
    assert_lse_close(lse, reference_lse(logits, target_col, 30.0), dtype)
    expected = reference_row_sum(logits, target_col, column_category, row_category)
    assert total.dtype == accumulation_dtype(dtype)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(total.cpu().double(), expected, rtol=tolerance, atol=tolerance)


@requires_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("categories", [False, True])
def test_write_row_softmax_with_row_add(dtype, categories):
    n_rows, n_cols = 7, 45
    logits = make_cosines(n_rows, n_cols, dtype)
    target_col = make_targets(n_rows, n_cols, None)
    acc_dtype = accumulation_dtype(dtype)
    lse, row_coef, target_value = row_inputs(reference_lse(logits, target_col, 8.0), acc_dtype)
    row_add = torch.randn(n_rows, dtype=torch.float64).to(acc_dtype).to(DEVICE)
    column_category = row_category = None
    match = torch.ones(n_rows, n_cols, dtype=torch.bool)
    if categories:
        column_category = torch.randint(0, 3, (n_cols,), device=DEVICE)
        row_category = torch.randint(0, 3, (n_rows,), device=DEVICE)
        match = column_category.cpu()[None, :] == row_category.cpu()[:, None]
    out = unwritten(n_rows, n_cols, dtype)
    triton_ops.write_row_softmax(
        logits,
        target_col,
        lse,
        row_coef,
        target_value,
        8.0,
        out,
        row_add=row_add,
        column_category=column_category,
        row_category=row_category,
        block_c=16,
        num_splits=2,
    )
    expected = reference_softmax(logits, target_col, lse, row_coef, target_value, 8.0, dtype)
    off_target = torch.arange(n_cols)[None, :] != target_col.cpu()[:, None]
    expected = expected + row_add.double().cpu()[:, None] * (match & off_target)
    assert_softmax_close(out, expected, dtype)


@requires_kernels
def test_write_row_softmax_keeps_nan():
    """A NaN coefficient is written as NaN, not hidden."""
    logits = make_cosines(2, 9, torch.float32)
    target_col = torch.tensor([1, 2], device=DEVICE)
    lse = reference_lse(logits, target_col, 64.0).float().to(DEVICE)
    row_coef = torch.tensor([float("nan"), 1.0], device=DEVICE)
    out = torch.zeros(2, 9, device=DEVICE)
    triton_ops.write_row_softmax(
        logits, target_col, lse, row_coef, torch.zeros(2, device=DEVICE), 64.0, out
    )
    assert out[0, [0, 2, 3]].isnan().all() and out[0, 1].item() == 0.0
    assert not out[1].isnan().any()


@requires_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("layout", ["column-slice", "transposed"])
def test_write_row_softmax_strided_logits(layout, dtype):
    n_rows, n_cols = 6, 37
    if layout == "column-slice":
        logits = make_cosines(n_rows, n_cols + 3, dtype)[:, 3:]
    else:
        logits = make_cosines(n_cols, n_rows, dtype).t()
    target_col = make_targets(n_rows, n_cols, None)
    out, expected = run_write(logits, target_col, 64.0, dtype)
    assert_softmax_close(out, expected, dtype)


@requires_kernels
def test_write_row_softmax_into_strided_out():
    """An ``out`` view with a row stride (or no unit column stride) is written in place."""
    logits = make_cosines(5, 11, torch.float32)
    target_col = make_targets(5, 11, None)
    acc_lse, row_coef, target_value = row_inputs(
        reference_lse(logits, target_col, 30.0), torch.float32
    )
    expected = reference_softmax(
        logits, target_col, acc_lse, row_coef, target_value, 30.0, torch.float32
    )
    for out in (unwritten(5, 14, torch.float32)[:, 2:13], unwritten(11, 5, torch.float32).t()):
        returned = triton_ops.write_row_softmax(
            logits, target_col, acc_lse, row_coef, target_value, 30.0, out
        )
        assert returned is out
        assert_softmax_close(out, expected, torch.float32)


@requires_kernels
def test_write_row_softmax_empty():
    out = torch.empty(0, 4, device=DEVICE)
    empty_rows = torch.empty(0, device=DEVICE)
    assert (
        triton_ops.write_row_softmax(
            torch.empty(0, 4, device=DEVICE),
            torch.empty(0, dtype=torch.int64, device=DEVICE),
            empty_rows,
            empty_rows,
            empty_rows,
            64.0,
            out,
        )
        is out
    )


# ---------------------------------------------------------------------------------------------
# Launch heuristics and packaging
# ---------------------------------------------------------------------------------------------


def test_import_marginkit_does_not_import_triton():
    code = "import sys, marginkit; assert 'triton' not in sys.modules, 'triton was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
