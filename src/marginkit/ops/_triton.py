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

Both are host launchers with the interface of their chunked-torch twins in
:mod:`marginkit.ops._cpu` (:class:`marginkit.ops._kernels.CosineKernels`, plus keyword-only
launch overrides for the tests). Each launches through a ``torch.library.triton_op``
(``marginkit::triton_row_statistics``, ``marginkit::triton_write_row_softmax``) whose body
calls ``wrap_triton`` on plain ``@triton.jit`` kernels, so ``make_fx`` / Inductor see the
kernels; the bodies read only shapes, strides, dtypes and devices, never tensor data. Launch
choices (tiles, splits, grids, the device guard) live in :mod:`marginkit.ops._launch`.

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

import torch
import triton
import triton.language as tl
from torch import Tensor

from marginkit.ops import _launch
from marginkit.ops._dtypes import accumulation_dtype

__all__ = [
    "interpreter_enabled",
    "row_logsumexp_excluding_target",
    "row_statistics_excluding_target",
    "write_row_softmax",
]

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
    return _launch.kernel_mode(_row_lse_partial_kernel)


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
    r"""One online pass per row: running max, rescaled running sum, running kept-cosine sum.

    Interface and maths: :meth:`marginkit.ops._kernels.CosineKernels.row_statistics_excluding_target`.
    ``logits`` may have any row stride (a column stride other than 1 is made contiguous
    first); ``block_c`` and ``num_splits`` override the tile width and the programs per row
    (tests).

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
    _launch.check_launchable(logits, _row_lse_partial_kernel)
    lse, total = torch.ops.marginkit.triton_row_statistics(
        logits, target_col, scale, row_sum, column_category, row_category, block_c, num_splits
    )
    return lse, (total if row_sum else None)


def _row_statistics(
    logits: Tensor,
    target_col: Tensor,
    scale: float,
    row_sum: bool,
    column_category: Tensor | None,
    row_category: Tensor | None,
    block_c: int | None,
    num_splits: int | None,
) -> tuple[Tensor, Tensor]:
    """The body of ``marginkit::triton_row_statistics``: ``(lse, row sum or empty)``."""
    n_rows, n_cols = logits.shape
    acc_dtype = accumulation_dtype(logits.dtype)
    device = logits.device
    lse = torch.empty(n_rows, dtype=acc_dtype, device=device)
    total = torch.zeros(n_rows if row_sum else 0, dtype=acc_dtype, device=device)
    if n_rows == 0:
        return lse, total
    if n_cols == 0:
        return lse.fill_(float("-inf")), total
    logits = _launch.unit_column_stride(logits)
    has_category = row_sum and column_category is not None
    column_category, row_category = _category_arguments(
        column_category if has_category else None, row_category, target_col
    )
    block_c, num_warps = _launch.column_tile(n_cols, logits.element_size(), block_c)
    cols_per_split, splits = cosine_splits(n_rows, n_cols, block_c, device, num_splits)
    scale_hi, scale_lo = _launch.split_float(scale)

    row_sum_out = total if row_sum else lse  # not touched without ROW_SUM
    if splits == 1:
        partial_max = partial_sum = partial_row_sum = lse  # not touched by the single split
    else:
        partial_max = torch.empty(n_rows, splits, dtype=acc_dtype, device=device)
        partial_sum = torch.empty(n_rows, splits, dtype=acc_dtype, device=device)
        partial_row_sum = (
            torch.empty(n_rows, splits, dtype=acc_dtype, device=device) if row_sum else lse
        )
    with _launch.device_guard(logits):
        _launch.traceable(_row_lse_partial_kernel, logits)[_launch.check_grid((n_rows, splits))](
            logits,
            _launch.column_index(target_col, n_cols),
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
            ROW_ALIGN=_launch.row_alignment(logits),
            BLOCK_C=block_c,
            SINGLE_SPLIT=splits == 1,
            ROW_SUM=row_sum,
            HAS_CATEGORY=has_category,
            num_warps=num_warps,
            enable_fp_fusion=True,
        )
        if splits > 1:
            block_n, block_splits = combine_tile(n_rows, splits)
            _launch.traceable(_combine_lse_partials_kernel, logits)[
                _launch.check_grid((_launch.cdiv(n_rows, block_n),))
            ](
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
    r"""Write every element of ``out`` exactly once, tile by tile.

    Interface and maths: :meth:`marginkit.ops._kernels.CosineKernels.write_row_softmax`.
    ``logits`` may have any row stride; ``block_c`` and ``num_splits`` override the tile width
    and the programs per row (tests).

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
    _launch.check_launchable(logits, _row_lse_partial_kernel)
    torch.ops.marginkit.triton_write_row_softmax(
        logits,
        target_col,
        lse,
        row_coef,
        target_value,
        scale,
        out,
        row_add,
        column_category,
        row_category,
        block_c,
        num_splits,
    )
    return out


def _write_row_softmax(
    logits: Tensor,
    target_col: Tensor,
    lse: Tensor,
    row_coef: Tensor,
    target_value: Tensor,
    scale: float,
    out: Tensor,
    row_add: Tensor | None,
    column_category: Tensor | None,
    row_category: Tensor | None,
    block_c: int | None,
    num_splits: int | None,
) -> None:
    """The body of ``marginkit::triton_write_row_softmax`` (writes ``out``)."""
    n_rows, n_cols = logits.shape
    if n_rows == 0 or n_cols == 0:
        return
    acc_dtype = accumulation_dtype(logits.dtype)
    logits = _launch.unit_column_stride(logits)
    dest = (
        out if out.stride(1) == 1 else torch.empty_like(out, memory_format=torch.contiguous_format)
    )
    block_c, num_warps = _launch.column_tile(n_cols, logits.element_size(), block_c)
    cols_per_split, splits = cosine_splits(n_rows, n_cols, block_c, logits.device, num_splits)
    scale_hi, scale_lo = _launch.split_float(scale)
    lse = lse.to(acc_dtype).contiguous()
    has_row_add = row_add is not None
    has_category = has_row_add and column_category is not None
    column_category, row_category = _category_arguments(
        column_category if has_category else None, row_category, target_col
    )
    with _launch.device_guard(logits):
        _launch.traceable(_write_row_softmax_kernel, logits)[_launch.check_grid((n_rows, splits))](
            logits,
            _launch.column_index(target_col, n_cols),
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
            LOGITS_ROW_ALIGN=_launch.row_alignment(logits),
            OUT_ROW_ALIGN=_launch.row_alignment(dest),
            BLOCK_C=block_c,
            HAS_ROW_ADD=has_row_add,
            HAS_CATEGORY=has_category,
            num_warps=num_warps,
            enable_fp_fusion=True,
        )
    if dest is not out:
        out.copy_(dest)


torch.library.triton_op("marginkit::triton_row_statistics", mutates_args=())(_row_statistics)
torch.library.triton_op("marginkit::triton_write_row_softmax", mutates_args=("out",))(
    _write_row_softmax
)


def cosine_splits(
    n_rows: int, n_cols: int, block_c: int, device: torch.device, num_splits: int | None = None
) -> tuple[int, int]:
    """``(cols_per_split, splits)`` of the cosine kernels' grid ``(n_rows, splits)``.

    :func:`marginkit.ops._launch.split_columns` with 4 programs per SM on a compiled GPU launch
    and one split per row in the interpreter.
    """
    wanted = _launch.wanted_programs(device, _kernel_mode() == "compiled")
    return _launch.split_columns(n_rows, n_cols, block_c, wanted, num_splits)


def combine_tile(n_rows: int, splits: int) -> tuple[int, int]:
    """``(BLOCK_N, BLOCK_SPLITS)`` of the combine kernel: at most 2048 partials per program.

    Example:
        >>> combine_tile(1000, 14)
        (128, 16)
    """
    block_splits = _launch.next_power_of_2(splits)
    block_n = max(1, _COMBINE_TILE // block_splits)
    return min(block_n, _launch.next_power_of_2(n_rows)), block_splits


def _category_arguments(
    column_category: Tensor | None, row_category: Tensor | None, placeholder: Tensor
) -> tuple[Tensor, Tensor]:
    """Contiguous categories, or ``placeholder`` twice (never read) without them.

    Categories of up to 32 bits are passed as int32 (4 bytes per column read in the hot loop);
    int64 ids stay int64 (their range is unknown without a host read).
    """
    if column_category is None:
        return placeholder, placeholder
    wide = torch.int64 in (column_category.dtype, row_category.dtype)
    dtype = torch.int64 if wide else torch.int32
    return column_category.to(dtype).contiguous(), row_category.to(dtype).contiguous()
