r"""Triton kernels for the N×C part of :func:`marginkit.ops.target_logsumexp`.

The margin arithmetic happens in torch on N-length vectors (:mod:`marginkit.ops._margin`); the
two passes over the N×C cosine matrix are margin-agnostic and live here:

* :func:`row_statistics_excluding_target` — the forward pass, a single-pass ("online") row
  log-sum-exp of the scaled cosines with each row's target column left out, and optionally the
  row sum of the other cosines (of the row's category when categories are given),

  .. math::
      R_i = \log \sum_{j \ne t_i} e^{s\,x_{ij}}, \qquad
      S_i = \sum_{j \ne t_i,\ \kappa(j) = \rho_i} x_{ij};

* :func:`write_row_softmax` — the backward pass, which writes every element of the output once,

  .. math::
      y_{ij} = c_i\, e^{s\,x_{ij} - R_i} + a_i [\kappa(j) = \rho_i] \quad (j \ne t_i), \qquad
      y_{i t_i} = v_i.

Both are host launchers with the same signatures as their chunked-torch twins in
:mod:`marginkit.ops._cpu` (plus keyword-only launch overrides for the tests); they pick the block sizes and launch plain ``@triton.jit`` kernels,
so they can sit inside an opaque ``torch.library`` custom op. The hosts read only shapes,
strides, dtypes and devices, never tensor data, and allocate with ``torch.empty``, so they also
trace under ``torch.library.triton_op`` should each launch be wrapped in ``wrap_triton`` later.

Importing this module imports :mod:`triton`; ``import marginkit`` does not.

Interpreter mode (CPU tensors):
    Triton 3.x decides between compiling a kernel and interpreting it when ``@triton.jit``
    decorates it: ``triton.jit`` reads the knob ``triton.knobs.runtime.interpret`` (the
    environment variable ``TRITON_INTERPRET``) at that moment and returns either a
    ``JITFunction`` or an ``InterpretedFunction``. That happens for this module's kernels when it
    is first imported, and for ``triton.language``'s own jit functions (``tl.sum``, ``tl.max``,
    used by the kernels) when ``triton`` is first imported — and Lightning and
    ``torch._dynamo`` import ``triton``. A caller who wants the kernels to run on CPU tensors
    must therefore set ``TRITON_INTERPRET=1`` **before anything imports triton**: in the
    environment, or at the very top of the entry point (for pytest, ``tests/conftest.py``).
    Setting it later has no effect on functions already decorated.
    :func:`interpreter_enabled` reports whether the interpreter is usable; the launchers raise a
    ``RuntimeError`` saying what to do when given CPU tensors without it (or when only this
    module, not ``triton``, was imported in interpreter mode). The interpreter also runs CUDA
    tensors (copying them to the host).

Numerics:
    fp16 / bf16 / fp32 logits are accumulated in float32, float64 logits in float64 (``lse``,
    ``row_coef`` and ``target_value`` have that accumulation dtype). ``scale`` reaches the kernels
    as a pair of float32 scalars (Triton passes Python floats as fp32) whose sum is ``scale`` to
    about 2⁻⁴⁸, so float64 results are not limited by an fp32-rounded scale. The kernels use
    ``tl.exp``/``tl.log`` in natural units: on NVIDIA, fp32 ``tl.exp`` already lowers to one
    multiply and ``ex2.approx.f32``, and the one extra multiply per element is free in these
    memory-bound passes, while fp64 goes through libdevice ``exp``/``log`` for full precision.
    Launches pass ``enable_fp_fusion=True`` explicitly (Triton 3.9 warns that its default flips
    in 3.10), so ``s·x − lse`` is one correctly rounded FMA.
"""

from __future__ import annotations

import functools
import math
import struct

import torch
import triton
import triton.language as tl
from torch import Tensor

from marginkit.ops._dtypes import accumulation_dtype

__all__ = [
    "interpreter_enabled",
    "row_logsumexp_excluding_target",
    "row_statistics_excluding_target",
    "write_row_softmax",
]

# Largest column tile per element size of the logits, chosen so that each thread holds about 16
# values of the tile at the num_warps below (8192 half-precision values = 16 KiB per tile).
_MAX_BLOCK_C = {2: 8192, 4: 4096, 8: 2048}
_MIN_BLOCK_C = 16
# Values of a tile per thread: num_warps = BLOCK_C / (32 · 16), clamped to [1, 16].
_VALUES_PER_THREAD = 16
# How many programs per streaming multiprocessor a launch should offer before a row is split over
# several programs (a row of C = 1M at N = 64 would otherwise leave most of an H100 idle).
_PROGRAMS_PER_SM = 4
# CUDA caps grid dimensions 1 and 2 at 65535; the split count is grid dimension 1.
_MAX_GRID_Y = 65535
# The combine kernel of the two-stage log-sum-exp holds BLOCK_N × BLOCK_SPLITS partials.
_COMBINE_TILE = 2048


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _online_lse_update(running_max, running_sum, scaled):
    """Fold one tile of scaled logits (excluded columns ``−inf``) into ``(m, s)``.

    ``m' = max(m, max z)``, ``s' = s · exp(m − m') + Σ exp(z − m')``. While every column seen is
    excluded ``m' = −inf``; 0 then stands in for ``m'`` in the exponents, so no ``−inf − (−inf)``
    (NaN) appears and ``s`` stays 0.
    """
    new_max = tl.maximum(running_max, tl.max(scaled, axis=0))
    shift = tl.where(new_max == float("-inf"), 0.0, new_max)
    new_sum = running_sum * tl.exp(running_max - shift) + tl.sum(tl.exp(scaled - shift), axis=0)
    return new_max, new_sum


@triton.jit
def _row_sum_update(running_total, cosines, keep, cats_ptr, cols, row_category, HAS_CATEGORY):
    """Add the kept cosines of a tile (of the row's category, with ``HAS_CATEGORY``)."""
    if HAS_CATEGORY:
        cats = tl.load(cats_ptr + cols, mask=keep, other=0)
        keep = keep & (cats == row_category)
    return running_total + tl.sum(tl.where(keep, cosines, 0.0), axis=0)


@triton.jit
def _row_lse_partial_kernel(
    logits_ptr,
    target_ptr,
    lse_ptr,
    partial_max_ptr,
    partial_sum_ptr,
    row_sum_ptr,
    partial_row_sum_ptr,
    column_category_ptr,
    row_category_ptr,
    n_cols,
    stride_row,
    cols_per_split,
    num_splits,
    scale_hi,
    scale_lo,
    ROW_ALIGN: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SINGLE_SPLIT: tl.constexpr,
    ROW_SUM: tl.constexpr,
    HAS_CATEGORY: tl.constexpr,
):
    """Online log-sum-exp of ``scale · logits[row, chunk]`` without the row's target column.

    Program (row, split) walks the columns ``[split · cols_per_split, (split + 1) ·
    cols_per_split) ∩ [0, n_cols)`` in tiles of ``BLOCK_C`` — whole tiles unmasked (so the
    loads vectorise), then at most one masked tail tile — keeping a running max ``m`` and a
    running sum ``s = Σ exp(z − m)`` (:func:`_online_lse_update`). The target column and columns
    past the chunk are ``−inf`` and add nothing. With ``ROW_SUM`` it also sums the cosines of the
    non-target columns (only those whose category equals the row's with ``HAS_CATEGORY``). With
    ``SINGLE_SPLIT`` the program writes ``lse = m + log s`` (``−inf`` when ``s = 0``) and the row
    sum; otherwise it writes ``(m, s)`` and the partial row sum for
    :func:`_combine_lse_partials_kernel`. ``ROW_ALIGN`` divides ``stride_row`` (an alignment
    hint).
    """
    row = tl.program_id(0)
    split = tl.program_id(1)
    acc_dtype = lse_ptr.dtype.element_ty
    scale = tl.cast(scale_hi, acc_dtype) + tl.cast(scale_lo, acc_dtype)

    row_ptr = logits_ptr + tl.multiple_of(row.to(tl.int64) * stride_row, ROW_ALIGN)
    target = tl.load(target_ptr + row)
    row_category = 0
    if HAS_CATEGORY:
        row_category = tl.load(row_category_ptr + row)
    col_begin = split * cols_per_split
    col_end = tl.minimum(col_begin + cols_per_split, n_cols)
    full_end = col_begin + (col_end - col_begin) // BLOCK_C * BLOCK_C
    offsets = tl.arange(0, BLOCK_C)

    running_max = tl.full([], float("-inf"), acc_dtype)
    running_sum = tl.full([], 0.0, acc_dtype)
    running_total = tl.full([], 0.0, acc_dtype)
    for tile_begin in range(col_begin, full_end, BLOCK_C):
        cols = tile_begin + offsets
        cosines = tl.load(row_ptr + cols).to(acc_dtype)
        keep = cols != target
        scaled = tl.where(keep, cosines * scale, float("-inf"))
        running_max, running_sum = _online_lse_update(running_max, running_sum, scaled)
        if ROW_SUM:
            running_total = _row_sum_update(
                running_total, cosines, keep, column_category_ptr, cols, row_category, HAS_CATEGORY
            )
    for tile_begin in range(full_end, col_end, BLOCK_C):  # the tail: zero or one tile
        cols = tile_begin + offsets
        in_chunk = cols < col_end
        cosines = tl.load(row_ptr + cols, mask=in_chunk, other=0.0).to(acc_dtype)
        keep = in_chunk & (cols != target)
        scaled = tl.where(keep, cosines * scale, float("-inf"))
        running_max, running_sum = _online_lse_update(running_max, running_sum, scaled)
        if ROW_SUM:
            running_total = _row_sum_update(
                running_total, cosines, keep, column_category_ptr, cols, row_category, HAS_CATEGORY
            )

    if SINGLE_SPLIT:
        shift = tl.where(running_max == float("-inf"), 0.0, running_max)
        tl.store(lse_ptr + row, shift + tl.log(running_sum))
        if ROW_SUM:
            tl.store(row_sum_ptr + row, running_total)
    else:
        slot = row.to(tl.int64) * num_splits + split
        tl.store(partial_max_ptr + slot, running_max)
        tl.store(partial_sum_ptr + slot, running_sum)
        if ROW_SUM:
            tl.store(partial_row_sum_ptr + slot, running_total)


@triton.jit
def _combine_lse_partials_kernel(
    partial_max_ptr,
    partial_sum_ptr,
    lse_ptr,
    partial_row_sum_ptr,
    row_sum_ptr,
    n_rows,
    num_splits,
    BLOCK_N: tl.constexpr,
    BLOCK_SPLITS: tl.constexpr,
    ROW_SUM: tl.constexpr,
):
    """Second stage: ``lse_i = M_i + log Σ_k s_ik · exp(m_ik − M_i)`` with ``M_i = max_k m_ik``.

    Splits whose columns were all excluded hold ``(m, s) = (−inf, 0)``; a row with no columns at
    all gets ``M = −inf`` and ``lse = log 0 = −inf`` (0 stands in for ``M`` in the exponents).
    With ``ROW_SUM`` the partial row sums are added up too.
    """
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    splits = tl.arange(0, BLOCK_SPLITS)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & (splits[None, :] < num_splits)
    slots = rows.to(tl.int64)[:, None] * num_splits + splits[None, :]
    part_max = tl.load(partial_max_ptr + slots, mask=mask, other=float("-inf"))
    part_sum = tl.load(partial_sum_ptr + slots, mask=mask, other=0.0)
    row_max = tl.max(part_max, axis=1)
    shift = tl.where(row_max == float("-inf"), 0.0, row_max)
    total = tl.sum(part_sum * tl.exp(part_max - shift[:, None]), axis=1)
    tl.store(lse_ptr + rows, shift + tl.log(total), mask=row_ok)
    if ROW_SUM:
        part_row_sum = tl.load(partial_row_sum_ptr + slots, mask=mask, other=0.0)
        tl.store(row_sum_ptr + rows, tl.sum(part_row_sum, axis=1), mask=row_ok)


@triton.jit
def _row_softmax_tile(
    cosines,
    cols,
    keep,
    target,
    scale,
    lse,
    row_coef,
    target_value,
    row_add,
    cats_ptr,
    row_category,
    HAS_ROW_ADD: tl.constexpr,
    HAS_CATEGORY: tl.constexpr,
):
    """``c · exp(scale · x − lse) (+ a · [κ(j) = ρ])`` with ``v`` at the target column.

    ``keep`` masks the columns to load categories for. No clamp: an overflow of the output dtype
    becomes ``inf`` when the caller stores, as in torch's own kernels.
    """
    values = row_coef * tl.exp(cosines * scale - lse)
    if HAS_ROW_ADD:
        if HAS_CATEGORY:
            cats = tl.load(cats_ptr + cols, mask=keep, other=0)
            values += tl.where(cats == row_category, row_add, 0.0)
        else:
            values += row_add
    return tl.where(cols == target, target_value, values)


@triton.jit
def _write_row_softmax_kernel(
    logits_ptr,
    target_ptr,
    lse_ptr,
    row_coef_ptr,
    target_value_ptr,
    row_add_ptr,
    column_category_ptr,
    row_category_ptr,
    out_ptr,
    n_cols,
    stride_logits_row,
    stride_out_row,
    cols_per_split,
    scale_hi,
    scale_lo,
    LOGITS_ROW_ALIGN: tl.constexpr,
    OUT_ROW_ALIGN: tl.constexpr,
    BLOCK_C: tl.constexpr,
    HAS_ROW_ADD: tl.constexpr,
    HAS_CATEGORY: tl.constexpr,
):
    """``out[row, j] = c · exp(scale · x_j − lse) (+ a · [κ(j) = ρ])``, the target column ``v``.

    Program (row, split) writes the columns ``[split · cols_per_split, (split + 1) ·
    cols_per_split) ∩ [0, n_cols)`` exactly once, in tiles of ``BLOCK_C``: whole tiles unmasked,
    then at most one masked tail tile. The ``*_ROW_ALIGN`` divide the row strides.
    """
    row = tl.program_id(0)
    split = tl.program_id(1)
    acc_dtype = lse_ptr.dtype.element_ty
    out_dtype = out_ptr.dtype.element_ty
    scale = tl.cast(scale_hi, acc_dtype) + tl.cast(scale_lo, acc_dtype)

    logits_row_ptr = logits_ptr + tl.multiple_of(
        row.to(tl.int64) * stride_logits_row, LOGITS_ROW_ALIGN
    )
    out_row_ptr = out_ptr + tl.multiple_of(row.to(tl.int64) * stride_out_row, OUT_ROW_ALIGN)
    target = tl.load(target_ptr + row)
    lse = tl.load(lse_ptr + row)
    row_coef = tl.load(row_coef_ptr + row).to(acc_dtype)
    target_value = tl.load(target_value_ptr + row).to(acc_dtype)
    row_add = tl.full([], 0.0, acc_dtype)
    if HAS_ROW_ADD:
        row_add = tl.load(row_add_ptr + row).to(acc_dtype)
    row_category = 0
    if HAS_CATEGORY:
        row_category = tl.load(row_category_ptr + row)
    col_begin = split * cols_per_split
    col_end = tl.minimum(col_begin + cols_per_split, n_cols)
    full_end = col_begin + (col_end - col_begin) // BLOCK_C * BLOCK_C
    offsets = tl.arange(0, BLOCK_C)

    for tile_begin in range(col_begin, full_end, BLOCK_C):
        cols = tile_begin + offsets
        cosines = tl.load(logits_row_ptr + cols).to(acc_dtype)
        values = _row_softmax_tile(
            cosines,
            cols,
            cols < col_end,
            target,
            scale,
            lse,
            row_coef,
            target_value,
            row_add,
            column_category_ptr,
            row_category,
            HAS_ROW_ADD,
            HAS_CATEGORY,
        )
        tl.store(out_row_ptr + cols, values.to(out_dtype))
    for tile_begin in range(full_end, col_end, BLOCK_C):  # the tail: zero or one tile
        cols = tile_begin + offsets
        in_chunk = cols < col_end
        cosines = tl.load(logits_row_ptr + cols, mask=in_chunk, other=0.0).to(acc_dtype)
        values = _row_softmax_tile(
            cosines,
            cols,
            in_chunk,
            target,
            scale,
            lse,
            row_coef,
            target_value,
            row_add,
            column_category_ptr,
            row_category,
            HAS_ROW_ADD,
            HAS_CATEGORY,
        )
        tl.store(out_row_ptr + cols, values.to(out_dtype), mask=in_chunk)


# ---------------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------------


def interpreter_enabled() -> bool:
    """Return whether this module's kernels run in Triton's interpreter (on CPU tensors too).

    True when both this module's kernels and Triton's own ``@triton.jit`` library functions
    (``tl.sum``, ``tl.max``, decorated when ``triton`` is first imported) were built for the
    interpreter, i.e. ``TRITON_INTERPRET=1`` was set before ``triton`` was first imported in the
    process. Decided at import time (see the module docstring); changing ``TRITON_INTERPRET``
    afterwards does not change the answer.

    Example:
        >>> isinstance(interpreter_enabled(), bool)
        True
    """
    return _kernel_mode() == "interpreted"


def _kernel_mode() -> str:
    """``"compiled"``, ``"interpreted"``, or ``"mixed"`` (interpreted kernels, compiled stdlib)."""
    kernels_compiled = isinstance(_row_lse_partial_kernel, triton.runtime.JITFunction)
    stdlib_compiled = isinstance(tl.sum, triton.runtime.JITFunction)
    if kernels_compiled:
        return "compiled"
    return "mixed" if stdlib_compiled else "interpreted"


def row_logsumexp_excluding_target(
    logits: Tensor,
    target_col: Tensor,
    scale: float,
    *,
    block_c: int | None = None,
    num_splits: int | None = None,
) -> Tensor:
    r"""Row log-sum-exp of the scaled logits, leaving out each row's target column.

    .. math::
        \mathrm{lse}_i = \log \sum_{j \ne t_i} \exp(s \cdot x_{ij})

    :func:`row_statistics_excluding_target` without the row sum (same launch overrides).

    Example:
        >>> import torch
        >>> if interpreter_enabled():
        ...     x = torch.tensor([[0.0, 1.0, 0.0]])
        ...     lse = row_logsumexp_excluding_target(x, torch.tensor([1]), 1.0)
        ...     assert torch.allclose(lse, torch.tensor([2.0]).log())
    """
    return row_statistics_excluding_target(
        logits, target_col, scale, block_c=block_c, num_splits=num_splits
    )[0]


def row_statistics_excluding_target(
    logits: Tensor,
    target_col: Tensor,
    scale: float,
    row_sum: bool = False,
    column_category: Tensor | None = None,
    row_category: Tensor | None = None,
    *,
    block_c: int | None = None,
    num_splits: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    r"""Row log-sum-exp of the scaled logits and row sum, leaving out each row's target column.

    .. math::
        R_i = \log \sum_{j \ne t_i} \exp(s \cdot x_{ij}), \qquad
        S_i = \sum_{j \ne t_i,\ \kappa(j) = \rho_i} x_{ij}

    computed in one online pass per row (running max, rescaled running sum and, with
    ``row_sum``, the running sum of the kept cosines). A ``t_i`` outside ``[0, C)`` (``-1``,
    ``-100``, or a class held by another rank's shard) excludes nothing; a row whose every
    column is excluded (``C == 1`` and ``t_i == 0``) gets ``R = -inf`` and ``S = 0``.

    Args:
        logits: ``(N, C)`` float16 / bfloat16 / float32 / float64, any row stride (a column
            stride other than 1 is made contiguous first).
        target_col: ``(N,)`` int64 column to leave out per row.
        scale: the factor ``s`` applied to every logit.
        row_sum: also compute :math:`S` (else ``None`` is returned for it).
        column_category: ``(C,)`` integer :math:`\kappa`, or ``None`` (every column counts).
        row_category: ``(N,)`` integer :math:`\rho` (with ``column_category``).
        block_c, num_splits: override the tile width and the programs per row (tests).

    Returns:
        ``(R, S)``, ``(N,)`` float32 (float64 for float64 ``logits``); ``S`` is ``None`` without
        ``row_sum``.

    Raises:
        RuntimeError: if the tensors are on the CPU and the kernels were not built for Triton's
            interpreter.

    Example:
        >>> import torch
        >>> if interpreter_enabled():
        ...     x = torch.tensor([[0.5, 1.0, 0.25]])
        ...     _, total = row_statistics_excluding_target(x, torch.tensor([1]), 1.0, True)
        ...     assert total.tolist() == [0.75]
    """
    _check_launchable(logits)
    n_rows, n_cols = logits.shape
    acc_dtype = accumulation_dtype(logits.dtype)
    device = logits.device
    lse = torch.empty(n_rows, dtype=acc_dtype, device=device)
    total = torch.zeros(n_rows, dtype=acc_dtype, device=device) if row_sum else None
    if n_rows == 0:
        return lse, total
    if n_cols == 0:
        return lse.fill_(float("-inf")), total
    logits = _unit_column_stride(logits)
    target_col = target_col.contiguous()
    has_category = row_sum and column_category is not None
    column_category, row_category = _category_arguments(
        column_category if has_category else None, row_category, target_col
    )
    block_c, num_warps = _column_tile(n_cols, logits.element_size(), block_c)
    cols_per_split, splits = _split_columns(n_rows, n_cols, block_c, device, num_splits)
    scale_hi, scale_lo = _split_float(scale)

    row_sum_out = lse if total is None else total  # not touched without ROW_SUM
    if splits == 1:
        partial_max = partial_sum = partial_row_sum = lse  # not touched by the single split
    else:
        partial_max = torch.empty(n_rows, splits, dtype=acc_dtype, device=device)
        partial_sum = torch.empty(n_rows, splits, dtype=acc_dtype, device=device)
        partial_row_sum = (
            torch.empty(n_rows, splits, dtype=acc_dtype, device=device) if row_sum else lse
        )
    _row_lse_partial_kernel[(n_rows, splits)](
        logits,
        target_col,
        lse,
        partial_max,
        partial_sum,
        row_sum_out,
        partial_row_sum,
        column_category,
        row_category,
        n_cols,
        logits.stride(0),
        cols_per_split,
        splits,
        scale_hi,
        scale_lo,
        ROW_ALIGN=_row_alignment(logits),
        BLOCK_C=block_c,
        SINGLE_SPLIT=splits == 1,
        ROW_SUM=row_sum,
        HAS_CATEGORY=has_category,
        num_warps=num_warps,
        enable_fp_fusion=True,
    )
    if splits > 1:
        block_splits = triton.next_power_of_2(splits)
        block_n = max(1, _COMBINE_TILE // block_splits)
        block_n = min(block_n, triton.next_power_of_2(n_rows))
        _combine_lse_partials_kernel[(triton.cdiv(n_rows, block_n),)](
            partial_max,
            partial_sum,
            lse,
            partial_row_sum,
            row_sum_out,
            n_rows,
            splits,
            BLOCK_N=block_n,
            BLOCK_SPLITS=block_splits,
            ROW_SUM=row_sum,
            num_warps=4,
            enable_fp_fusion=True,
        )
    return lse, total


def write_row_softmax(
    logits: Tensor,
    target_col: Tensor,
    lse: Tensor,
    row_coef: Tensor,
    target_value: Tensor,
    scale: float,
    out: Tensor,
    *,
    row_add: Tensor | None = None,
    column_category: Tensor | None = None,
    row_category: Tensor | None = None,
    block_c: int | None = None,
    num_splits: int | None = None,
) -> Tensor:
    r"""Write the row-scaled softmax of the scaled logits, with a given value in the target column.

    .. math::
        y_{ij} = c_i \exp(s \cdot x_{ij} - \mathrm{lse}_i) + a_i [\kappa(j) = \rho_i]
        \quad (j \ne t_i), \qquad y_{i t_i} = v_i \quad (0 \le t_i < C)

    (the :math:`a_i` term only with ``row_add``; without categories it is added to every
    non-target column). Every element is written exactly once. The maths runs in float32
    (float64 for float64 ``logits``); the result is rounded to ``out.dtype`` with no clamp, so an
    overflow of that dtype gives ``inf``, as torch's own kernels do.

    Args:
        logits: ``(N, C)`` float16 / bfloat16 / float32 / float64, any row stride.
        target_col: ``(N,)`` int64 target column per row (outside ``[0, C)``: none).
        lse: ``(N,)`` accumulation-dtype row log-sum-exp subtracted in the exponent.
        row_coef: ``(N,)`` accumulation-dtype factor ``c_i`` of each row.
        target_value: ``(N,)`` accumulation-dtype value ``v_i`` written at the target column.
        scale: the factor ``s`` applied to every logit.
        out: ``(N, C)`` float tensor receiving ``y`` (usually ``logits.dtype``).
        row_add: ``(N,)`` accumulation-dtype ``a_i`` added off target, or ``None``.
        column_category: ``(C,)`` integer :math:`\kappa`, or ``None`` (every column matches).
        row_category: ``(N,)`` integer :math:`\rho` (with ``column_category``).
        block_c, num_splits: override the tile width and the programs per row (tests).

    Returns:
        ``out``.

    Raises:
        RuntimeError: if the tensors are on the CPU and the kernels were not built for Triton's
            interpreter.

    Example:
        >>> import torch
        >>> if interpreter_enabled():
        ...     x, t = torch.zeros(1, 3), torch.tensor([1])
        ...     lse = torch.tensor([2.0]).log()
        ...     one, v = torch.ones(1), torch.tensor([-1.0])
        ...     y = write_row_softmax(x, t, lse, one, v, 1.0, torch.empty(1, 3))
        ...     assert y.tolist() == [[0.5, -1.0, 0.5]]
    """
    _check_launchable(logits)
    n_rows, n_cols = logits.shape
    if n_rows == 0 or n_cols == 0:
        return out
    acc_dtype = accumulation_dtype(logits.dtype)
    logits = _unit_column_stride(logits)
    dest = (
        out if out.stride(1) == 1 else torch.empty_like(out, memory_format=torch.contiguous_format)
    )
    block_c, num_warps = _column_tile(n_cols, logits.element_size(), block_c)
    cols_per_split, splits = _split_columns(n_rows, n_cols, block_c, logits.device, num_splits)
    scale_hi, scale_lo = _split_float(scale)
    lse = lse.to(acc_dtype).contiguous()
    has_row_add = row_add is not None
    has_category = has_row_add and column_category is not None
    column_category, row_category = _category_arguments(
        column_category if has_category else None, row_category, target_col
    )

    _write_row_softmax_kernel[(n_rows, splits)](
        logits,
        target_col.contiguous(),
        lse,
        row_coef.contiguous(),
        target_value.contiguous(),
        row_add.to(acc_dtype).contiguous() if has_row_add else lse,
        column_category,
        row_category,
        dest,
        n_cols,
        logits.stride(0),
        dest.stride(0),
        cols_per_split,
        scale_hi,
        scale_lo,
        LOGITS_ROW_ALIGN=_row_alignment(logits),
        OUT_ROW_ALIGN=_row_alignment(dest),
        BLOCK_C=block_c,
        HAS_ROW_ADD=has_row_add,
        HAS_CATEGORY=has_category,
        num_warps=num_warps,
        enable_fp_fusion=True,
    )
    if dest is not out:
        out.copy_(dest)
    return out


def _category_arguments(
    column_category: Tensor | None, row_category: Tensor | None, placeholder: Tensor
) -> tuple[Tensor, Tensor]:
    """Contiguous int64 categories, or ``placeholder`` twice (never read) without them."""
    if column_category is None:
        return placeholder, placeholder
    return (
        column_category.to(torch.int64).contiguous(),
        row_category.to(torch.int64).contiguous(),
    )


# ---------------------------------------------------------------------------------------------
# Launch heuristics
# ---------------------------------------------------------------------------------------------


def _check_launchable(logits: Tensor) -> None:
    mode = _kernel_mode()
    if mode == "mixed":
        raise RuntimeError(
            "marginkit's Triton kernels were built for Triton's interpreter but `triton` itself "
            "was imported before TRITON_INTERPRET=1 was set (Lightning and torch._dynamo import "
            "it), so triton.language's own functions are compiled-only: set TRITON_INTERPRET=1 "
            "in the environment, before anything imports triton"
        )
    if mode == "compiled" and logits.device.type == "cpu":
        raise RuntimeError(
            "marginkit's Triton kernels got CPU tensors but were compiled for a GPU: to run them "
            "in Triton's interpreter set TRITON_INTERPRET=1 before `triton` is first imported "
            "(in the environment), or pass CUDA tensors"
        )


def _row_alignment(matrix: Tensor) -> int:
    """Largest power of two up to 16 dividing the row stride (in elements).

    Triton only learns that an integer argument is a multiple of 16; a shard of C = 125000
    columns has 16-byte-aligned fp16 rows all the same, and this hint lets those loads vectorise.
    """
    stride = matrix.stride(0)
    return 16 if stride % 16 == 0 else stride & -stride


def _unit_column_stride(logits: Tensor) -> Tensor:
    """Keep any row stride; copy only when columns are not adjacent in memory."""
    if logits.stride(1) == 1 or logits.shape[1] == 1:
        return logits
    return logits.contiguous()


def _column_tile(n_cols: int, element_size: int, block_c: int | None) -> tuple[int, int]:
    """Return ``(BLOCK_C, num_warps)``: the whole row up to 8192 / 4096 / 2048 columns.

    The cap depends on the logits' element size so that a tile is at most 16 KiB, and num_warps
    grows with the tile so that each thread holds about 16 values (≤ 512 columns → 1 warp, 2048
    → 4, 4096 → 8, 8192 → 16): wide tiles amortise the per-tile max/sum reductions and let one
    program stream a row, 16 values per thread are two 16-byte vector loads of fp16 (four of
    fp32) and keep the fp32 working set in registers (≤ 64 registers per thread for the
    log-sum-exp kernel, no spills, on sm_90).
    """
    if block_c is None:
        block_c = min(_MAX_BLOCK_C[element_size], max(_MIN_BLOCK_C, triton.next_power_of_2(n_cols)))
    num_warps = min(16, max(1, block_c // (32 * _VALUES_PER_THREAD)))
    return block_c, num_warps


def _split_columns(
    n_rows: int, n_cols: int, block_c: int, device: torch.device, num_splits: int | None
) -> tuple[int, int]:
    """Return ``(cols_per_split, splits)``: how many programs share one row (or row tile).

    One program per row while the N rows already give each streaming multiprocessor
    ``_PROGRAMS_PER_SM`` programs; below that (small N, wide shards) a row is cut into column
    chunks of whole tiles, at most one chunk per tile and at most 65535 chunks (CUDA's limit on
    grid dimension 1). Under the interpreter there are no SMs to fill: one chunk per row.
    """
    n_tiles = triton.cdiv(n_cols, block_c)
    if num_splits is None:
        wanted_programs = 1
        if device.type == "cuda" and _kernel_mode() == "compiled":
            index = device.index if device.index is not None else torch.cuda.current_device()
            wanted_programs = _PROGRAMS_PER_SM * _sm_count(index)
        num_splits = triton.cdiv(wanted_programs, n_rows)
    num_splits = max(1, min(num_splits, n_tiles, _MAX_GRID_Y))
    cols_per_split = triton.cdiv(n_tiles, num_splits) * block_c
    return cols_per_split, triton.cdiv(n_cols, cols_per_split)


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _split_float(value: float) -> tuple[float, float]:
    """Return float32-representable ``(hi, lo)`` with ``hi + lo == value`` to about 2⁻⁴⁸."""
    value = float(value)
    if not math.isfinite(value) or abs(value) > 3.0e38:
        return value, 0.0
    hi = struct.unpack("f", struct.pack("f", value))[0]
    return hi, struct.unpack("f", struct.pack("f", value - hi))[0]
