"""The launch choices of the Triton kernels, as pure functions: tiles, splits, grid limits.

Nothing here launches a kernel, so the grids of sizes no interpreter could run (C = 10 M
classes, N = 1 M rows) are checked against CUDA's limits directly.
"""

from __future__ import annotations

import pytest
import torch

from marginkit.ops import _launch
from tests.helpers.run_if import requires_triton

# CUDA's limits, written out here (not read from the code under test).
AXIS0_LIMIT = 2**31 - 1
OTHER_AXES_LIMIT = 65535
# An H100 has 132 SMs; 4 programs per SM is what a compiled launch asks for.
H100_PROGRAMS = 4 * 132


def assert_within_cuda_limits(grid):
    assert 1 <= grid[0] <= AXIS0_LIMIT, grid
    for size in grid[1:]:
        assert 1 <= size <= OTHER_AXES_LIMIT, grid


@pytest.mark.parametrize(
    ("n_cols", "element_size", "expected"),
    [
        (1_000_000, 2, (8192, 16)),
        (1_000_000, 4, (4096, 8)),
        (1_000_000, 8, (2048, 4)),
        (4099, 4, (4096, 8)),
        (1000, 2, (1024, 2)),
        (5, 4, (16, 1)),
    ],
)
def test_column_tile(n_cols, element_size, expected):
    assert _launch.column_tile(n_cols, element_size, None) == expected


@pytest.mark.parametrize(
    ("n_cols", "block_c", "num_splits", "expected"),
    [
        (4099, 512, 3, (1536, 3)),  # 9 tiles: 3 + 3 + 3
        (4099, 512, 100, (512, 9)),  # at most one split per tile
        (4099, 512, 4, (1536, 3)),  # 3 + 3 + 3 covers the row: a 4th split would be empty
        (100, 4096, 8, (4096, 1)),
    ],
)
def test_split_columns(n_cols, block_c, num_splits, expected):
    got = _launch.split_columns(8, n_cols, block_c, 1, num_splits)
    assert got == expected


def test_split_float_keeps_float64_precision():
    hi, lo = _launch.split_float(1 / 0.07)
    assert hi == torch.tensor(1 / 0.07, dtype=torch.float32).item()
    assert abs((hi + lo) - 1 / 0.07) < 1e-14 * (1 / 0.07)
    assert _launch.split_float(64.0) == (64.0, 0.0)


def test_check_grid_names_the_axis():
    with pytest.raises(ValueError, match="grid axis 1 must be in"):
        _launch.check_grid((1, 65536))
    with pytest.raises(ValueError, match="grid axis 0 must be in"):
        _launch.check_grid((2**31, 1))


@pytest.mark.parametrize("n_rows", [1, 64, 4096, 1_000_000])
@pytest.mark.parametrize("n_cols", [1, 8191, 1_000_000, 10_000_000])
@pytest.mark.parametrize("element_size", [2, 4, 8])
@pytest.mark.parametrize("programs", [1, H100_PROGRAMS])
def test_cosine_grids_respect_cuda_limits(n_rows, n_cols, element_size, programs):
    block_c, _ = _launch.column_tile(n_cols, element_size)
    cols_per_split, splits = _launch.split_columns(n_rows, n_cols, block_c, programs)
    assert_within_cuda_limits((n_rows, splits))
    # The splits cover the row exactly once, in whole tiles.
    assert cols_per_split % block_c == 0
    assert (splits - 1) * cols_per_split < n_cols <= splits * cols_per_split


def test_split_count_is_capped_on_axis_one():
    # One row of 2^31 - 1 columns in tiles of 16 asks for far more than 65535 splits.
    _, splits = _launch.split_columns(1, 2**31 - 1, 16, wanted_programs=10**9)
    assert splits <= OTHER_AXES_LIMIT


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize(("n_rows", "n_classes"), [(1_000_000, 10_000_000), (1, 10_000_000)])
@pytest.mark.parametrize("compiled", [True, False], ids=["cuda-tiles", "interpreter-tiles"])
def test_linear_grids_at_ten_million_classes(dtype, n_rows, n_classes, compiled):
    from marginkit.ops._linear_triton import linear_grids, linear_launch_options

    options = linear_launch_options(dtype, compiled)
    grids = linear_grids(n_rows, n_classes, options, H100_PROGRAMS if compiled else 1)
    for grid, _ in grids.values():
        assert_within_cuda_limits(grid)
    # The weight pass gives every class tile its own program on axis 0.
    assert grids["grad_weight"][0] == (-(-n_classes // options["BLOCK_C"]),)
    # The forward's splits cover the classes.
    (row_tiles, splits), per_split = grids["forward"]
    assert row_tiles == -(-n_rows // options["BLOCK_N"])
    assert (splits - 1) * per_split < n_classes <= splits * per_split


def test_column_index_is_int32_and_rejects_wide_matrices():
    assert _launch.column_index(torch.tensor([5, -1]), 10).tolist() == [5, -1]
    assert _launch.column_index(torch.tensor([5]), 10).dtype == torch.int32
    with pytest.raises(ValueError, match="C must be < 2\\*\\*31"):
        _launch.column_index(torch.tensor([0]), 2**31)


def test_device_guard_enters_the_tensors_cuda_device():
    import contextlib

    assert isinstance(_launch.device_guard(torch.zeros(1)), contextlib.nullcontext)
    # A CUDA tensor's guard is torch.cuda.device of its index (built without a GPU: the meta
    # device stands in for the tensor, the guard only reads .device).
    fake = torch.empty(1, device="meta")
    guard = _launch.device_guard(type("T", (), {"device": torch.device("cuda", 1)})())
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert isinstance(_launch.device_guard(fake), contextlib.nullcontext)
