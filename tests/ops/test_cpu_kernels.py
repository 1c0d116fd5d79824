"""The chunked-torch N×C kernels (``marginkit.ops._cpu``) against float64 formulas written here."""

from __future__ import annotations

import math

import pytest
import torch

from marginkit.ops import _cpu

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
TOLERANCES = {
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.float16: {"rtol": 1e-3, "atol": 1e-5},
    torch.bfloat16: {"rtol": 1e-2, "atol": 1e-5},
}


def accumulation(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def lse_excluding_reference(logits, target_col, scale):
    x = logits.double() * scale
    n_cols = x.shape[1]
    keep = torch.ones_like(x, dtype=torch.bool)
    for row, col in enumerate(target_col.tolist()):
        if 0 <= col < n_cols:
            keep[row, col] = False
    return torch.logsumexp(torch.where(keep, x, -math.inf), dim=1)


def softmax_reference(logits, target_col, lse, row_coef, target_value, scale):
    y = row_coef.double()[:, None] * torch.exp(scale * logits.double() - lse.double()[:, None])
    for row, col in enumerate(target_col.tolist()):
        if 0 <= col < y.shape[1]:
            y[row, col] = target_value[row].double()
    return y


def targets_with_gaps(n_rows, n_cols, seed=0):
    """In-range targets, with every third row pointing outside the shard (or ignored)."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, n_cols, (n_rows,), generator=generator)
    outside = torch.tensor([-100, -1, n_cols, n_cols + 7])
    target[::3] = outside[torch.arange(0, n_rows, 3) % 4]
    return target


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n_rows", "n_cols"), [(17, 4099), (3, 5), (1, 1), (4, 2), (40, 33)])
@pytest.mark.parametrize("chunk_bytes", [None, 200])
def test_row_logsumexp_excluding_target(monkeypatch, dtype, n_rows, n_cols, chunk_bytes):
    if chunk_bytes is not None:
        monkeypatch.setattr(_cpu, "_CHUNK_BYTES", chunk_bytes)
    generator = torch.Generator().manual_seed(1)
    logits = (torch.rand(n_rows, n_cols, generator=generator) * 2 - 1).to(dtype)
    target = targets_with_gaps(n_rows, n_cols)
    lse = _cpu.row_logsumexp_excluding_target(logits, target, 64.0)
    assert lse.dtype == accumulation(dtype) and lse.shape == (n_rows,)
    expected = lse_excluding_reference(logits, target, 64.0)
    torch.testing.assert_close(
        lse.double(), expected, **TOLERANCES[torch.float32 if dtype != torch.float64 else dtype]
    )


def test_row_with_every_column_excluded_is_minus_inf():
    lse = _cpu.row_logsumexp_excluding_target(torch.ones(2, 1), torch.tensor([0, -1]), 64.0)
    assert lse[0].item() == -math.inf and lse[1].item() == pytest.approx(64.0)


def test_zero_columns_and_zero_rows():
    assert (
        _cpu.row_logsumexp_excluding_target(torch.ones(2, 0), torch.tensor([0, 1]), 1.0).tolist()
        == [-math.inf] * 2
    )
    assert _cpu.row_logsumexp_excluding_target(
        torch.ones(0, 3), torch.tensor([], dtype=torch.long), 1.0
    ).shape == (0,)


def test_large_gap_between_target_and_rest_does_not_underflow():
    # Excluding the target before taking the row max keeps the rest representable.
    logits = torch.tensor([[1.0, -1.0, -1.0]])
    lse = _cpu.row_logsumexp_excluding_target(logits, torch.tensor([0]), 64.0)
    assert lse.item() == pytest.approx(-64.0 + math.log(2.0), rel=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n_rows", "n_cols"), [(17, 4099), (3, 5), (1, 1), (40, 33)])
@pytest.mark.parametrize("chunk_bytes", [None, 200])
def test_write_row_softmax(monkeypatch, dtype, n_rows, n_cols, chunk_bytes):
    if chunk_bytes is not None:
        monkeypatch.setattr(_cpu, "_CHUNK_BYTES", chunk_bytes)
    generator = torch.Generator().manual_seed(2)
    logits = (torch.rand(n_rows, n_cols, generator=generator) * 2 - 1).to(dtype)
    target = targets_with_gaps(n_rows, n_cols)
    acc = accumulation(dtype)
    lse = lse_excluding_reference(logits, torch.full((n_rows,), -1), 30.0).to(acc)
    row_coef = torch.randn(n_rows, generator=generator).to(acc)
    target_value = torch.randn(n_rows, generator=generator).to(acc)
    out = torch.full((n_rows, n_cols), float("nan"), dtype=dtype)
    result = _cpu.write_row_softmax(logits, target, lse, row_coef, target_value, 30.0, out)
    assert result is out
    expected = softmax_reference(logits, target, lse, row_coef, target_value, 30.0)
    torch.testing.assert_close(out.double(), expected.to(dtype).double(), **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_write_row_softmax_overflow_is_inf_not_clamped(dtype):
    # Past the output dtype's range the value is ±inf, as torch's own kernels round it.
    logits = torch.zeros(2, 3, dtype=dtype)
    huge = 1e39 if dtype != torch.float16 else 1e6
    out = torch.empty(2, 3, dtype=dtype)
    _cpu.write_row_softmax(
        logits,
        torch.tensor([1, -1]),
        torch.tensor([0.0, 0.0]),
        torch.tensor([huge, -huge]),
        torch.tensor([float("inf"), 0.0]),
        1.0,
        out,
    )
    assert out[0].tolist() == [math.inf] * 3
    assert out[1].tolist() == [-math.inf] * 3


def row_statistics_reference(logits, target_col, scale, column_category=None, row_category=None):
    """float64 (R, S) by a loop over the rows."""
    x = logits.double()
    lse, total = [], []
    for row, col in enumerate(target_col.tolist()):
        keep = torch.ones(x.shape[1], dtype=torch.bool)
        if 0 <= col < x.shape[1]:
            keep[col] = False
        lse.append(torch.logsumexp(scale * x[row][keep], dim=0) if keep.any() else -math.inf)
        if column_category is not None:
            keep &= column_category == row_category[row]
        total.append(x[row][keep].sum())
    return torch.tensor(lse, dtype=torch.float64), torch.tensor(total, dtype=torch.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("categories", [False, True])
@pytest.mark.parametrize("chunk_bytes", [None, 200])
def test_row_statistics_with_row_sum(monkeypatch, dtype, categories, chunk_bytes):
    if chunk_bytes is not None:
        monkeypatch.setattr(_cpu, "_CHUNK_BYTES", chunk_bytes)
    generator = torch.Generator().manual_seed(3)
    logits = (torch.rand(17, 33, generator=generator) * 2 - 1).to(dtype)
    target = targets_with_gaps(17, 33)
    column_category = torch.randint(0, 3, (33,), generator=generator) if categories else None
    row_category = torch.randint(0, 3, (17,), generator=generator) if categories else None
    lse, total = _cpu.row_statistics_excluding_target(
        logits, target, 30.0, True, column_category, row_category
    )
    ref_lse, ref_total = row_statistics_reference(
        logits, target, 30.0, column_category, row_category
    )
    tolerance = TOLERANCES[torch.float32 if dtype != torch.float64 else dtype]
    torch.testing.assert_close(lse.double(), ref_lse, **tolerance)
    torch.testing.assert_close(total.double(), ref_total, **tolerance)
    assert _cpu.row_statistics_excluding_target(logits, target, 30.0)[1] is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("categories", [False, True])
def test_write_row_softmax_with_row_add(monkeypatch, dtype, categories):
    monkeypatch.setattr(_cpu, "_CHUNK_BYTES", 200)
    generator = torch.Generator().manual_seed(4)
    logits = (torch.rand(9, 13, generator=generator) * 2 - 1).to(dtype)
    target = targets_with_gaps(9, 13)
    acc = accumulation(dtype)
    lse = lse_excluding_reference(logits, target, 8.0).to(acc)
    row_coef, target_value, row_add = (torch.randn(9, generator=generator).to(acc) for _ in "abc")
    column_category = torch.randint(0, 3, (13,), generator=generator) if categories else None
    row_category = torch.randint(0, 3, (9,), generator=generator) if categories else None
    out = torch.full((9, 13), float("nan"), dtype=dtype)
    _cpu.write_row_softmax(
        logits,
        target,
        lse,
        row_coef,
        target_value,
        8.0,
        out,
        row_add=row_add,
        column_category=column_category,
        row_category=row_category,
    )
    match = (
        torch.ones(9, 13, dtype=torch.bool)
        if column_category is None
        else column_category[None, :] == row_category[:, None]
    )
    expected = softmax_reference(logits, target, lse, row_coef, target_value, 8.0)
    for row, col in enumerate(target.tolist()):
        if 0 <= col < 13:
            match[row, col] = False
    expected = expected + row_add.double()[:, None] * match
    torch.testing.assert_close(out.double(), expected.to(dtype).double(), **TOLERANCES[dtype])


def test_write_row_softmax_keeps_nan():
    out = _cpu.write_row_softmax(
        torch.tensor([[float("nan"), 0.0]]),
        torch.tensor([-1]),
        torch.tensor([0.0]),
        torch.tensor([1.0]),
        torch.tensor([0.0]),
        1.0,
        torch.empty(1, 2),
    )
    assert math.isnan(out[0, 0].item()) and out[0, 1].item() == 1.0
