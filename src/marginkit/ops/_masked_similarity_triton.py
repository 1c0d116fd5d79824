r"""Triton kernels of :func:`marginkit.ops.masked_similarity_reductions` (CUDA, or Triton's interpreter).

The twins of :mod:`marginkit.ops._masked_similarity_cpu`: same signatures, same results. Three
kernels, each over tiles of the B×R matrix :math:`v = T(x y^\top)` that is never stored:

* ``_forward_kernel``: one program per block of rows; it walks the references in tiles,
  computes the tile's dot products with ``tl.dot`` (the whole feature dimension in one tile),
  the value, the two masks (from labels, or loaded pair counts), and folds the exponents into
  an online log-sum-exp per row and mask, plus the row sums and counts;
* ``_grad_rows_kernel``: per block of rows, the tile's :math:`\partial\mathcal L/\partial g`
  recomputed from the saved log-sum-exps, accumulated into ``grad_x = G y``;
* ``_grad_refs_kernel``: per block of references, the same tiles column-wise,
  ``grad_y = Gᵀ x`` (two kernels instead of atomics: exact and deterministic).

float32 dot products follow ``torch.get_float32_matmul_precision()`` (``"highest"``: IEEE,
else TF32), as torch's matmul does; float16/bfloat16 inputs are multiplied in their dtype with
float32 accumulation, float64 in float64. The feature dimension is one tile (padded to a power
of two, at most ``MAX_FEATURES``); the launchers fall back to the chunked-torch kernels above
that.

Importing this module imports :mod:`triton`; ``import marginkit`` does not. On CPU tensors the
kernels run in Triton's interpreter only (``TRITON_INTERPRET=1`` set before triton is first
imported).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from marginkit.ops import _masked_similarity_cpu as _cpu
from marginkit.ops._dtypes import accumulation_dtype

__all__ = ["MAX_FEATURES", "interpreter_enabled", "row_gradients", "row_reductions"]

MAX_FEATURES = 1024
# Tiles (rows × references). The interpreter runs the same code with the same tile sizes.
_BLOCK_M = 32
_BLOCK_N = 64
_DISTANCES = {"cosine": 0, "euclidean": 1, "squared_euclidean": 2}
_FLOOR = _cpu.SQUARED_DISTANCE_FLOOR


def interpreter_enabled() -> bool:
    """Whether this module's kernels and Triton's own library functions were built for the
    interpreter (``TRITON_INTERPRET=1`` before triton was first imported): CPU tensors run.

    Example:
        >>> isinstance(interpreter_enabled(), bool)
        True
    """
    kernels_compiled = isinstance(_forward_kernel, triton.runtime.JITFunction)
    return not kernels_compiled and not isinstance(tl.sum, triton.runtime.JITFunction)


@triton.jit
def _value_and_slope(dots, DISTANCE: tl.constexpr, FLOOR: tl.constexpr):
    """``(v, dv/dg)``: the cosine, or the (squared) Euclidean distance of unit vectors."""
    if DISTANCE == 0:
        return dots, dots * 0.0 + 1.0
    unclamped = 2.0 - 2.0 * dots
    squared = tl.maximum(unclamped, 0.0)
    if DISTANCE == 2:
        return squared, tl.where(unclamped >= 0.0, -2.0, 0.0)
    above = squared > FLOOR
    root = tl.sqrt(tl.maximum(squared, FLOOR))
    return tl.where(above, root, 0.0), tl.where(above, -1.0 / root, 0.0)


@triton.jit
def _exponent(value, scale, shift, threshold, DIRECTION: tl.constexpr):
    """``(φ, φ')`` of ``φ = a · w · (v − d)``, ``w = 1`` or ``relu(σ (v − c))`` held constant."""
    if DIRECTION == 0:
        return scale * (value - shift), value * 0.0 + scale
    weight = tl.maximum(DIRECTION * (value - threshold), 0.0) * scale
    return weight * (value - shift), weight


@triton.jit
def _tile(
    x,
    y_ptr,
    cols,
    dims,
    rows,
    row_labels,
    labels_ptr_ref,
    pos_ptr,
    neg_ptr,
    B,
    R,
    D,
    stride_yr,
    stride_yd,
    stride_pb,
    stride_pr,
    stride_nb,
    stride_nr,
    self_offset,
    DISTANCE: tl.constexpr,
    BY_COUNTS: tl.constexpr,
    HAS_SELF: tl.constexpr,
    ALLOW_TF32: tl.constexpr,
    FLOOR: tl.constexpr,
):
    """One (rows × references) tile: ``(y, v, dv/dg, pos_count, neg_count)``."""
    col_ok = cols < R
    y = tl.load(
        y_ptr + cols[:, None] * stride_yr + dims[None, :] * stride_yd,
        mask=col_ok[:, None] & (dims[None, :] < D),
        other=0.0,
    )
    if ALLOW_TF32:
        dots = tl.dot(x, tl.trans(y), input_precision="tf32")
    else:
        dots = tl.dot(x, tl.trans(y), input_precision="ieee")
    value, slope = _value_and_slope(dots, DISTANCE, FLOOR)
    both_ok = (rows[:, None] < B) & col_ok[None, :]
    if BY_COUNTS:
        pos = tl.load(
            pos_ptr + rows[:, None] * stride_pb + cols[None, :] * stride_pr, mask=both_ok, other=0
        )
        neg = tl.load(
            neg_ptr + rows[:, None] * stride_nb + cols[None, :] * stride_nr, mask=both_ok, other=0
        )
        pos_count = pos.to(value.dtype)
        neg_count = neg.to(value.dtype)
    else:
        ref_labels = tl.load(labels_ptr_ref + cols, mask=col_ok, other=0)
        same = row_labels[:, None] == ref_labels[None, :]
        positive = same & both_ok
        if HAS_SELF:
            own = (rows + self_offset) % R
            positive = positive & (cols[None, :] != own[:, None])
        pos_count = tl.where(positive, 1.0, 0.0).to(value.dtype)
        neg_count = tl.where((~same) & both_ok, 1.0, 0.0).to(value.dtype)
    return y, value, slope, pos_count, neg_count


@triton.jit
def _lse_update(running_max, running_sum, exponent, count):
    """Fold a tile's ``log Σ count · e^φ`` into the per-row ``(m, s)`` (counts 0 excluded)."""
    masked = tl.where(count > 0.0, exponent, float("-inf"))
    new_max = tl.maximum(running_max, tl.max(masked, axis=1))
    shift = tl.where(new_max == float("-inf"), 0.0, new_max)
    terms = tl.where(count > 0.0, count * tl.exp(masked - shift[:, None]), 0.0)
    return new_max, running_sum * tl.exp(running_max - shift) + tl.sum(terms, axis=1)


@triton.jit
def _forward_kernel(
    x_ptr,
    y_ptr,
    labels_ptr,
    ref_labels_ptr,
    pos_ptr,
    neg_ptr,
    out_ptr,
    B,
    R,
    D,
    stride_xb,
    stride_xd,
    stride_yr,
    stride_yd,
    stride_pb,
    stride_pr,
    stride_nb,
    stride_nr,
    self_offset,
    pos_scale,
    pos_shift,
    pos_threshold,
    neg_scale,
    neg_shift,
    neg_threshold,
    POS_DIRECTION: tl.constexpr,
    NEG_DIRECTION: tl.constexpr,
    DISTANCE: tl.constexpr,
    BY_COUNTS: tl.constexpr,
    HAS_SELF: tl.constexpr,
    ALLOW_TF32: tl.constexpr,
    FLOOR: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    dims = tl.arange(0, BLOCK_D)
    x = tl.load(
        x_ptr + rows[:, None] * stride_xb + dims[None, :] * stride_xd,
        mask=row_ok[:, None] & (dims[None, :] < D),
        other=0.0,
    )
    row_labels = rows * 0
    if not BY_COUNTS:
        row_labels = tl.load(labels_ptr + rows, mask=row_ok, other=0)
    zero = tl.zeros((BLOCK_M,), dtype=tl.float32)
    if x_ptr.dtype.element_ty == tl.float64:
        zero = tl.zeros((BLOCK_M,), dtype=tl.float64)
    max_pos = zero + float("-inf")
    max_neg = zero + float("-inf")
    exp_pos = zero
    exp_neg = zero
    sum_pos = zero
    sum_neg = zero
    n_pos = zero
    n_neg = zero
    for start in range(0, R, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        _y, value, _slope, pos_count, neg_count = _tile(
            x, y_ptr, cols, dims, rows, row_labels, ref_labels_ptr, pos_ptr, neg_ptr, B, R, D,
            stride_yr, stride_yd, stride_pb, stride_pr, stride_nb, stride_nr, self_offset,
            DISTANCE, BY_COUNTS, HAS_SELF, ALLOW_TF32, FLOOR,
        )  # fmt: skip
        phi_pos, _ = _exponent(value, pos_scale, pos_shift, pos_threshold, POS_DIRECTION)
        phi_neg, _ = _exponent(value, neg_scale, neg_shift, neg_threshold, NEG_DIRECTION)
        max_pos, exp_pos = _lse_update(max_pos, exp_pos, phi_pos, pos_count)
        max_neg, exp_neg = _lse_update(max_neg, exp_neg, phi_neg, neg_count)
        sum_pos += tl.sum(value * pos_count, axis=1)
        sum_neg += tl.sum(value * neg_count, axis=1)
        n_pos += tl.sum(pos_count, axis=1)
        n_neg += tl.sum(neg_count, axis=1)
    shift_pos = tl.where(max_pos == float("-inf"), 0.0, max_pos)
    shift_neg = tl.where(max_neg == float("-inf"), 0.0, max_neg)
    tl.store(out_ptr + rows, shift_pos + tl.log(exp_pos), mask=row_ok)
    tl.store(out_ptr + B + rows, shift_neg + tl.log(exp_neg), mask=row_ok)
    tl.store(out_ptr + 2 * B + rows, sum_pos, mask=row_ok)
    tl.store(out_ptr + 3 * B + rows, sum_neg, mask=row_ok)
    tl.store(out_ptr + 4 * B + rows, n_pos, mask=row_ok)
    tl.store(out_ptr + 5 * B + rows, n_neg, mask=row_ok)


@triton.jit
def _tile_gradient(
    value,
    slope,
    pos_count,
    neg_count,
    vectors_ptr,
    rows,
    B,
    pos_scale,
    pos_shift,
    pos_threshold,
    neg_scale,
    neg_shift,
    neg_threshold,
    POS_DIRECTION: tl.constexpr,
    NEG_DIRECTION: tl.constexpr,
):
    r"""The tile's :math:`\partial\mathcal L/\partial g` from the per-row vectors.

    ``vectors_ptr`` holds (6, B): the gradients of lse_pos, lse_neg, sum_pos, sum_neg, then
    lse_pos and lse_neg.
    """
    row_ok = rows < B
    g_lse_pos = tl.load(vectors_ptr + rows, mask=row_ok, other=0.0)
    g_lse_neg = tl.load(vectors_ptr + B + rows, mask=row_ok, other=0.0)
    g_sum_pos = tl.load(vectors_ptr + 2 * B + rows, mask=row_ok, other=0.0)
    g_sum_neg = tl.load(vectors_ptr + 3 * B + rows, mask=row_ok, other=0.0)
    lse_pos = tl.load(vectors_ptr + 4 * B + rows, mask=row_ok, other=0.0)
    lse_neg = tl.load(vectors_ptr + 5 * B + rows, mask=row_ok, other=0.0)
    phi_pos, d_pos = _exponent(value, pos_scale, pos_shift, pos_threshold, POS_DIRECTION)
    phi_neg, d_neg = _exponent(value, neg_scale, neg_shift, neg_threshold, NEG_DIRECTION)
    soft_pos = tl.where(pos_count > 0.0, tl.exp(phi_pos - lse_pos[:, None]), 0.0) * pos_count
    soft_neg = tl.where(neg_count > 0.0, tl.exp(phi_neg - lse_neg[:, None]), 0.0) * neg_count
    grad = soft_pos * d_pos * g_lse_pos[:, None] + pos_count * g_sum_pos[:, None]
    grad += soft_neg * d_neg * g_lse_neg[:, None] + neg_count * g_sum_neg[:, None]
    return grad * slope


@triton.jit
def _grad_rows_kernel(
    x_ptr,
    y_ptr,
    labels_ptr,
    ref_labels_ptr,
    pos_ptr,
    neg_ptr,
    vectors_ptr,
    grad_ptr,
    B,
    R,
    D,
    stride_xb,
    stride_xd,
    stride_yr,
    stride_yd,
    stride_pb,
    stride_pr,
    stride_nb,
    stride_nr,
    self_offset,
    pos_scale,
    pos_shift,
    pos_threshold,
    neg_scale,
    neg_shift,
    neg_threshold,
    POS_DIRECTION: tl.constexpr,
    NEG_DIRECTION: tl.constexpr,
    DISTANCE: tl.constexpr,
    BY_COUNTS: tl.constexpr,
    HAS_SELF: tl.constexpr,
    ALLOW_TF32: tl.constexpr,
    FLOOR: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims[None, :] < D
    x = tl.load(
        x_ptr + rows[:, None] * stride_xb + dims[None, :] * stride_xd,
        mask=row_ok[:, None] & dim_ok,
        other=0.0,
    )
    row_labels = rows * 0
    if not BY_COUNTS:
        row_labels = tl.load(labels_ptr + rows, mask=row_ok, other=0)
    accumulator = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    if x_ptr.dtype.element_ty == tl.float64:
        accumulator = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float64)
    for start in range(0, R, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        y, value, slope, pos_count, neg_count = _tile(
            x, y_ptr, cols, dims, rows, row_labels, ref_labels_ptr, pos_ptr, neg_ptr, B, R, D,
            stride_yr, stride_yd, stride_pb, stride_pr, stride_nb, stride_nr, self_offset,
            DISTANCE, BY_COUNTS, HAS_SELF, ALLOW_TF32, FLOOR,
        )  # fmt: skip
        grad = _tile_gradient(
            value, slope, pos_count, neg_count, vectors_ptr, rows, B, pos_scale, pos_shift,
            pos_threshold, neg_scale, neg_shift, neg_threshold, POS_DIRECTION, NEG_DIRECTION,
        )  # fmt: skip
        if ALLOW_TF32:
            accumulator += tl.dot(grad, y.to(grad.dtype), input_precision="tf32")
        else:
            accumulator += tl.dot(grad, y.to(grad.dtype), input_precision="ieee")
    tl.store(
        grad_ptr + rows[:, None] * D + dims[None, :], accumulator, mask=row_ok[:, None] & dim_ok
    )


@triton.jit
def _grad_refs_kernel(
    x_ptr,
    y_ptr,
    labels_ptr,
    ref_labels_ptr,
    pos_ptr,
    neg_ptr,
    vectors_ptr,
    grad_ptr,
    B,
    R,
    D,
    stride_xb,
    stride_xd,
    stride_yr,
    stride_yd,
    stride_pb,
    stride_pr,
    stride_nb,
    stride_nr,
    self_offset,
    pos_scale,
    pos_shift,
    pos_threshold,
    neg_scale,
    neg_shift,
    neg_threshold,
    POS_DIRECTION: tl.constexpr,
    NEG_DIRECTION: tl.constexpr,
    DISTANCE: tl.constexpr,
    BY_COUNTS: tl.constexpr,
    HAS_SELF: tl.constexpr,
    ALLOW_TF32: tl.constexpr,
    FLOOR: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < R
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims[None, :] < D
    accumulator = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    if x_ptr.dtype.element_ty == tl.float64:
        accumulator = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float64)
    for start in range(0, B, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < B
        x = tl.load(
            x_ptr + rows[:, None] * stride_xb + dims[None, :] * stride_xd,
            mask=row_ok[:, None] & dim_ok,
            other=0.0,
        )
        row_labels = rows * 0
        if not BY_COUNTS:
            row_labels = tl.load(labels_ptr + rows, mask=row_ok, other=0)
        _y, value, slope, pos_count, neg_count = _tile(
            x, y_ptr, cols, dims, rows, row_labels, ref_labels_ptr, pos_ptr, neg_ptr, B, R, D,
            stride_yr, stride_yd, stride_pb, stride_pr, stride_nb, stride_nr, self_offset,
            DISTANCE, BY_COUNTS, HAS_SELF, ALLOW_TF32, FLOOR,
        )  # fmt: skip
        grad = _tile_gradient(
            value, slope, pos_count, neg_count, vectors_ptr, rows, B, pos_scale, pos_shift,
            pos_threshold, neg_scale, neg_shift, neg_threshold, POS_DIRECTION, NEG_DIRECTION,
        )  # fmt: skip
        if ALLOW_TF32:
            accumulator += tl.dot(tl.trans(grad), x.to(grad.dtype), input_precision="tf32")
        else:
            accumulator += tl.dot(tl.trans(grad), x.to(grad.dtype), input_precision="ieee")
    tl.store(
        grad_ptr + cols[:, None] * D + dims[None, :], accumulator, mask=col_ok[:, None] & dim_ok
    )


# ---------------------------------------------------------------------------------------------
# Launchers (the signatures of the chunked-torch kernels)
# ---------------------------------------------------------------------------------------------


def _launch_arguments(
    embeddings, references, labels, ref_labels, pos_count, neg_count, self_offset, distance
):
    by_counts = pos_count is not None
    dummy = embeddings.new_empty(0, dtype=torch.int64)
    pos = pos_count if by_counts else dummy
    neg = neg_count if by_counts else dummy
    if by_counts and pos.dtype == torch.bool:
        pos, neg = pos.to(torch.uint8), neg.to(torch.uint8)
    pointers = (
        embeddings,
        references,
        labels if labels is not None else dummy,
        ref_labels if ref_labels is not None else dummy,
        pos,
        neg,
    )
    pos_strides = (pos.stride(0), pos.stride(1)) if by_counts else (0, 0)
    neg_strides = (neg.stride(0), neg.stride(1)) if by_counts else (0, 0)
    scalars = (
        embeddings.shape[0],
        references.shape[0],
        embeddings.shape[1],
        embeddings.stride(0),
        embeddings.stride(1),
        references.stride(0),
        references.stride(1),
        *pos_strides,
        *neg_strides,
        max(self_offset, 0),
    )
    flags = {
        "DISTANCE": _DISTANCES[distance],
        "BY_COUNTS": by_counts,
        "HAS_SELF": (not by_counts) and self_offset >= 0,
        "ALLOW_TF32": embeddings.dtype == torch.float32
        and torch.get_float32_matmul_precision() != "highest",
        "FLOOR": _FLOOR,
    }
    return pointers, scalars, flags


def _terms(pos_term, neg_term):
    scalars = (*pos_term[:3], *neg_term[:3])
    return scalars, {"POS_DIRECTION": int(pos_term[3]), "NEG_DIRECTION": int(neg_term[3])}


def _blocks(n_features: int, block_m: int | None, block_n: int | None) -> dict:
    return {
        "BLOCK_M": block_m or _BLOCK_M,
        "BLOCK_N": block_n or _BLOCK_N,
        "BLOCK_D": max(16, triton.next_power_of_2(n_features)),
    }


def row_reductions(
    embeddings: Tensor,
    references: Tensor,
    labels: Tensor | None,
    ref_labels: Tensor | None,
    pos_count: Tensor | None,
    neg_count: Tensor | None,
    self_offset: int,
    distance: str,
    pos_term: list[float],
    neg_term: list[float],
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> list[Tensor]:
    """``[lse_pos, lse_neg, sum_pos, sum_neg, n_pos, n_neg]``, as the chunked-torch kernel."""
    if embeddings.shape[1] > MAX_FEATURES:
        return _cpu.row_reductions(
            embeddings, references, labels, ref_labels, pos_count, neg_count, self_offset,
            distance, pos_term, neg_term,
        )  # fmt: skip
    batch = embeddings.shape[0]
    acc_dtype = accumulation_dtype(embeddings.dtype)
    out = torch.empty(6, batch, dtype=acc_dtype, device=embeddings.device)
    if batch == 0:
        return list(out.unbind(0))
    pointers, scalars, flags = _launch_arguments(
        embeddings, references, labels, ref_labels, pos_count, neg_count, self_offset, distance
    )
    term_scalars, term_flags = _terms(pos_term, neg_term)
    blocks = _blocks(embeddings.shape[1], block_m, block_n)
    grid = (triton.cdiv(batch, blocks["BLOCK_M"]),)
    _forward_kernel[grid](*pointers, out, *scalars, *term_scalars, **term_flags, **flags, **blocks)
    return [part.clone() for part in out.unbind(0)]


def row_gradients(
    grads: list[Tensor],
    lse: list[Tensor],
    embeddings: Tensor,
    references: Tensor,
    labels: Tensor | None,
    ref_labels: Tensor | None,
    pos_count: Tensor | None,
    neg_count: Tensor | None,
    self_offset: int,
    distance: str,
    pos_term: list[float],
    neg_term: list[float],
    references_grad: bool = True,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[Tensor, Tensor]:
    """``(grad_embeddings, grad_references)`` in the accumulation dtype, as the torch kernel."""
    if embeddings.shape[1] > MAX_FEATURES:
        return _cpu.row_gradients(
            grads, lse, embeddings, references, labels, ref_labels, pos_count, neg_count,
            self_offset, distance, pos_term, neg_term, references_grad,
        )  # fmt: skip
    acc_dtype = accumulation_dtype(embeddings.dtype)
    batch, n_refs, n_features = embeddings.shape[0], references.shape[0], embeddings.shape[1]
    grad_embeddings = torch.zeros(batch, n_features, dtype=acc_dtype, device=embeddings.device)
    ref_rows = n_refs if references_grad else 0
    grad_references = torch.zeros(ref_rows, n_features, dtype=acc_dtype, device=embeddings.device)
    if batch == 0 or n_refs == 0:
        return grad_embeddings, grad_references
    vectors = torch.stack([*[g.to(acc_dtype) for g in grads], *lse]).contiguous()
    pointers, scalars, flags = _launch_arguments(
        embeddings, references, labels, ref_labels, pos_count, neg_count, self_offset, distance
    )
    term_scalars, term_flags = _terms(pos_term, neg_term)
    blocks = _blocks(n_features, block_m, block_n)
    arguments = (*scalars, *term_scalars)
    options = {**term_flags, **flags, **blocks}
    _grad_rows_kernel[(triton.cdiv(batch, blocks["BLOCK_M"]),)](
        *pointers, vectors, grad_embeddings, *arguments, **options
    )
    if references_grad:
        _grad_refs_kernel[(triton.cdiv(n_refs, blocks["BLOCK_N"]),)](
            *pointers, vectors, grad_references, *arguments, **options
        )
    return grad_embeddings, grad_references
