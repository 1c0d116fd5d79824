"""Launch heuristics of the Triton kernels: tiles, splits, grids, device guard (no kernels here).

Everything a host launcher of :mod:`marginkit.ops._triton` or :mod:`marginkit.ops._linear_triton`
decides before a launch, as plain functions of shapes, element sizes and devices, so that the
choices can be tested without a GPU (the grid limits at C = 10 M classes, N = 1 M rows) and the
two kernel modules share one copy. Importing this module does not import :mod:`triton`.

CUDA's grid limits: axis 0 below 2³¹, axes 1 and 2 at most 65,535. Every grid built here puts
the dimension that grows with the data (rows, or class tiles) on axis 0 and caps axis 1 (the
splits of a row); :func:`check_grid` is the one place the limits are written down.
"""

from __future__ import annotations

import contextlib
import functools
import math
import struct

import torch
from torch import Tensor

__all__ = [
    "MAX_GRID_X",
    "MAX_GRID_YZ",
    "cdiv",
    "check_grid",
    "check_launchable",
    "column_index",
    "column_tile",
    "device_guard",
    "kernel_mode",
    "next_power_of_2",
    "row_alignment",
    "split_columns",
    "split_float",
    "traceable",
    "unit_column_stride",
    "wanted_programs",
]

MAX_GRID_X = 2**31 - 1
MAX_GRID_YZ = 65535

# Largest column tile per element size of the logits, chosen so that each thread holds about 16
# values of the tile at the num_warps below (8192 half-precision values = 16 KiB per tile).
_MAX_BLOCK_C = {2: 8192, 4: 4096, 8: 2048}
_MIN_BLOCK_C = 16
# Values of a tile per thread: num_warps = BLOCK_C / (32 · 16), clamped to [1, 16].
_VALUES_PER_THREAD = 16
# How many programs per streaming multiprocessor a launch should offer before a row is split over
# several programs (a row of C = 1M at N = 64 would otherwise leave most of an H100 idle).
_PROGRAMS_PER_SM = 4


def cdiv(a: int, b: int) -> int:
    """``⌈a / b⌉`` for non-negative ``a`` and positive ``b``.

    Example:
        >>> cdiv(10, 4), cdiv(8, 4)
        (3, 2)
    """
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``).

    Example:
        >>> next_power_of_2(100), next_power_of_2(1)
        (128, 1)
    """
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def check_grid(grid: tuple[int, ...]) -> tuple[int, ...]:
    """Return ``grid`` after checking it against CUDA's limits (``ValueError`` naming the axis).

    Example:
        >>> check_grid((2**20, 65535))
        (1048576, 65535)
    """
    for axis, size in enumerate(grid):
        limit = MAX_GRID_X if axis == 0 else MAX_GRID_YZ
        if not 1 <= size <= limit:
            raise ValueError(f"grid axis {axis} must be in [1, {limit}], got {size}")
    return grid


def kernel_mode(kernel: object) -> str:
    """``"compiled"``, ``"interpreted"``, or ``"mixed"`` (interpreted kernels, compiled stdlib).

    ``kernel`` is any ``@triton.jit`` function of the caller's module: Triton decides between
    compiling and interpreting when it decorates a function (see :mod:`marginkit.ops._triton`).
    """
    import triton
    import triton.language as tl

    if isinstance(kernel, triton.runtime.JITFunction):
        return "compiled"
    return "mixed" if isinstance(tl.sum, triton.runtime.JITFunction) else "interpreted"


def check_launchable(tensor: Tensor, kernel: object) -> None:
    """Raise a ``RuntimeError`` saying what to do when ``kernel`` cannot run on ``tensor``."""
    mode = kernel_mode(kernel)
    if mode == "mixed":
        raise RuntimeError(
            "marginkit's Triton kernels were built for Triton's interpreter but `triton` itself "
            "was imported before TRITON_INTERPRET=1 was set (Lightning and torch._dynamo import "
            "it), so triton.language's own functions are compiled-only: set TRITON_INTERPRET=1 "
            "in the environment, before anything imports triton"
        )
    if mode == "compiled" and tensor.device.type == "cpu":
        raise RuntimeError(
            "marginkit's Triton kernels got CPU tensors but were compiled for a GPU: to run them "
            "in Triton's interpreter set TRITON_INTERPRET=1 before `triton` is first imported "
            "(in the environment), or pass CUDA tensors"
        )


def device_guard(tensor: Tensor) -> contextlib.AbstractContextManager:
    """The context a launch runs in: ``torch.cuda.device(tensor.device)`` for CUDA tensors.

    Triton launches on the *current* device and its current stream; under this guard those are
    ``tensor``'s device and ``torch.cuda.current_stream(tensor.device)``, so tensors on
    ``cuda:1`` while ``cuda:0`` is current launch on ``cuda:1``'s stream. CPU tensors (the
    interpreter) need no guard.

    Example:
        >>> import contextlib, torch
        >>> isinstance(device_guard(torch.zeros(1)), contextlib.nullcontext)
        True
    """
    if tensor.device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.device(tensor.device)


def traceable(kernel: object, tensor: Tensor) -> object:
    """``wrap_triton(kernel)``: the kernel as a ``triton_op`` body launches it (``[grid](...)``).

    Compiled kernels under a fake-tensor trace (the op's fake kernel, ``make_fx``, Inductor)
    become a traced higher-order op that computes nothing. Interpreted kernels are returned as
    they are and cannot run on fake tensors, so there the launch is skipped instead: a fake
    kernel only allocates its outputs.
    """
    from torch._subclasses.fake_tensor import is_fake
    from torch.library import wrap_triton

    wrapped = wrap_triton(kernel)
    if wrapped is kernel and is_fake(tensor):
        return _NoLaunch()
    return wrapped


class _NoLaunch:
    def __getitem__(self, _grid: tuple[int, ...]):
        return lambda *_args, **_kwargs: None


def column_index(target_col: Tensor, n_cols: int) -> Tensor:
    """``target_col`` as contiguous int32 (the kernels compare it with int32 column tiles).

    Valid for every ``n_cols < 2³¹`` (checked): a target is ``-1`` or a column.

    Example:
        >>> column_index(torch.tensor([3, -1]), 4).dtype
        torch.int32
    """
    if n_cols >= 2**31:
        raise ValueError(f"the kernels index columns in int32: C must be < 2**31, got {n_cols}")
    return target_col.to(torch.int32).contiguous()


def row_alignment(matrix: Tensor) -> int:
    """Largest power of two up to 16 dividing the row stride (in elements).

    Triton only learns that an integer argument is a multiple of 16; a shard of C = 125000
    columns has 16-byte-aligned fp16 rows all the same, and this hint lets those loads vectorise.

    Example:
        >>> row_alignment(torch.empty(3, 24)), row_alignment(torch.empty(3, 20))
        (8, 4)
    """
    stride = matrix.stride(0)
    return 16 if stride % 16 == 0 else stride & -stride


def unit_column_stride(logits: Tensor) -> Tensor:
    """Keep any row stride; copy only when columns are not adjacent in memory."""
    if logits.stride(1) == 1 or logits.shape[1] == 1:
        return logits
    return logits.contiguous()


def column_tile(n_cols: int, element_size: int, block_c: int | None = None) -> tuple[int, int]:
    """Return ``(BLOCK_C, num_warps)`` of the cosine kernels: the whole row up to 8192 / 4096 / 2048.

    The cap depends on the logits' element size so that a tile is at most 16 KiB, and num_warps
    grows with the tile so that each thread holds about 16 values (≤ 512 columns → 1 warp, 2048
    → 4, 4096 → 8, 8192 → 16): wide tiles amortise the per-tile max/sum reductions, and 16
    values per thread are two 16-byte vector loads of fp16 (four of fp32). Register use and
    spills are not measured yet: ``benchmarks/gpu.py`` prints them on a GPU.

    Example:
        >>> column_tile(100, 2), column_tile(10**6, 2), column_tile(10**6, 8)
        ((128, 1), (8192, 16), (2048, 4))
    """
    if block_c is None:
        block_c = min(_MAX_BLOCK_C[element_size], max(_MIN_BLOCK_C, next_power_of_2(n_cols)))
    num_warps = min(16, max(1, block_c // (32 * _VALUES_PER_THREAD)))
    return block_c, num_warps


def split_columns(
    n_rows: int,
    n_cols: int,
    block_c: int,
    wanted_programs: int = 1,
    num_splits: int | None = None,
) -> tuple[int, int]:
    """Return ``(cols_per_split, splits)``: how many programs share one row (or row tile).

    One program per row while the ``n_rows`` rows (or row tiles) already give
    ``wanted_programs`` programs; below that (small N, wide shards) a row is cut into column
    chunks of whole tiles, at most one chunk per tile and at most 65535 chunks (the split count
    is grid axis 1). ``num_splits`` overrides the choice (tests), within the same bounds.

    Example:
        >>> split_columns(64, 10**6, 8192, wanted_programs=528)
        (114688, 9)
        >>> split_columns(10**6, 10**7, 8192, wanted_programs=528)
        (10002432, 1)
    """
    n_tiles = cdiv(n_cols, block_c)
    if num_splits is None:
        num_splits = cdiv(wanted_programs, max(1, n_rows))
    num_splits = max(1, min(num_splits, n_tiles, MAX_GRID_YZ))
    cols_per_split = cdiv(n_tiles, num_splits) * block_c
    return cols_per_split, cdiv(n_cols, cols_per_split)


def wanted_programs(device: torch.device, compiled: bool) -> int:
    """Programs a launch on ``device`` should offer: 4 per SM on CUDA, 1 in the interpreter."""
    if device.type != "cuda" or not compiled:
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _PROGRAMS_PER_SM * _sm_count(index)


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def split_float(value: float) -> tuple[float, float]:
    """Return float32-representable ``(hi, lo)`` with ``hi + lo == value`` to about 2⁻⁴⁸.

    Example:
        >>> hi, lo = split_float(0.1)
        >>> abs(hi + lo - 0.1) < 1e-15, hi == 0.1
        (True, False)
    """
    value = float(value)
    if not math.isfinite(value) or abs(value) > 3.0e38:
        return value, 0.0
    hi = struct.unpack("f", struct.pack("f", value))[0]
    return hi, struct.unpack("f", struct.pack("f", value - hi))[0]
