r"""Triton kernels of the normalised-linear log-sum-exp (CUDA; CPU under ``TRITON_INTERPRET=1``).

The twins of :mod:`marginkit.ops._linear_cpu` (interface:
:class:`marginkit.ops._kernels.LinearKernels`), after Apple's Cut Cross-Entropy: 2-D tiles of
``BLOCK_N`` rows × ``BLOCK_C`` classes whose cosines are computed with ``tl.dot`` (tensor cores
for float16 / bfloat16, fp32 accumulation; ``tf32x3`` for float32, about float32 accuracy;
``ieee`` for float64) over ``BLOCK_D`` slices of the embedding dimension, and never stored.
Both inputs are read through both of their strides (a transposed ``(D, C)`` weight is not
copied), with int64 row offsets computed once per tile and int32 indices in the loops.

* forward, :func:`row_logsumexp_linear`: program (row tile, class split) walks its classes
  tile by tile with an online log-sum-exp and writes one ``(max, sum)`` pair per row; a second
  step combines the splits (:math:`R = M + \log\sum_k \sigma_k e^{m_k - M}`);
* backward, :func:`row_logsumexp_linear_backward`. The weight pass, program (class tile), owns
  its classes: for each row tile it recomputes :math:`E = e^{s x - R} \in [0, 1]` (0 at the
  target) and adds :math:`(E \odot c/\gamma)^\top \hat E_{rows}\cdot\gamma` with
  :math:`\gamma` the tile's largest :math:`|c_i|`, then takes the normalisation's backward (the
  tangential projection) in its epilogue and writes the weight gradient in the weight's dtype:
  no atomics. The embedding gradient :math:`c \odot (E\hat W)` is either

  - added by the same pass with relaxed (``sem="relaxed"``) atomic adds into one fp32
    ``(N, D)`` buffer: the default, one pass, last bits vary between runs; or
  - under ``torch.use_deterministic_algorithms(True)`` (or ``deterministic=True``) computed
    by a second pass, program (row tile, class split), that owns its rows and writes its
    split's ``(N, D)`` partial; the partials are summed in a fixed order. Bitwise repeatable.

  Each row's coefficient :math:`c_i` is applied in fp32 afterwards.

  The operand of each ``tl.dot`` is thus :math:`E` (or :math:`E c/\gamma`) in ``[-1, 1]`` in the
  input dtype, never :math:`c\,E`: with :math:`c \approx s/N` (a mean loss) and no loss scale,
  :math:`c\,E` rounded to float16 would flush most entries to zero. Tiles whose :math:`E`
  rounds to zero everywhere are skipped (exact: they add nothing).

The cosine of a tile is the dot product of the *raw* rows scaled by both inverse norms after the
fp32 accumulation; in the backward the tiles fed to ``tl.dot`` are normalised first (every value
in ``[-1, 1]``, so nothing overflows float16).

Interpreter: numpy has no bfloat16 and the interpreter's bfloat16 ``tl.dot`` returns garbage, so
under the interpreter bfloat16 tiles are converted to float32 just before the dot (``UPCAST``, a
launch parameter); float16 and the wider dtypes run the GPU's code path. Launch choices live in
:mod:`marginkit.ops._launch` and :func:`linear_grids`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from marginkit.ops import _launch
from marginkit.ops._dtypes import accumulation_dtype
from marginkit.ops._linear_cpu import NORM_EPS

__all__ = [
    "linear_grids",
    "linear_launch_options",
    "row_logsumexp_linear",
    "row_logsumexp_linear_backward",
]

# Tiles (BLOCK_N, BLOCK_C, BLOCK_D, num_warps) by element size on CUDA: 64 × 128 × 64 half tiles
# are the usual tensor-core shape; float32 (tf32x3) and float64 get smaller tiles, meant to stay
# within registers. Untuned and unmeasured: benchmarks/gpu.py prints their registers and spills.
CUDA_TILES = {2: (64, 128, 64, 8), 4: (64, 64, 32, 4), 8: (32, 32, 16, 4)}
# Under the interpreter every tile is one numpy call: the smallest tl.dot shape.
INTERPRETER_TILES = (16, 16, 16, 1)


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _load_slice(row_ptrs, row_ok, d, d_ok, stride_col):
    """``matrix[rows, d]`` from per-row base pointers, 0 outside ``row_ok × d_ok``."""
    return tl.load(
        row_ptrs[:, None] + d[None, :] * stride_col,
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )


@triton.jit
def _tile_dots(
    e_rows,
    w_rows,
    row_ok,
    col_ok,
    dim,
    stride_e_col,
    stride_w_col,
    acc_dtype: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """``e_rows · w_colsᵀ`` of the raw rows, accumulated over ``BLOCK_D`` slices in ``acc_dtype``."""
    dots = tl.zeros([BLOCK_N, BLOCK_C], dtype=acc_dtype)
    offsets = tl.arange(0, BLOCK_D)
    for d0 in range(0, dim, BLOCK_D):
        d = d0 + offsets
        d_ok = d < dim
        e = _load_slice(e_rows, row_ok, d, d_ok, stride_e_col)
        w = _load_slice(w_rows, col_ok, d, d_ok, stride_w_col)
        if UPCAST:
            e = e.to(acc_dtype)
            w = w.to(acc_dtype)
        dots = tl.dot(e, tl.trans(w), acc=dots, input_precision=DOT_PRECISION)
    return dots


@triton.jit
def _row_softmax_block(
    e_rows,
    w_rows,
    rows,
    cols,
    row_ok,
    col_ok,
    inv_e_ptr,
    inv_w,
    target,
    lse,
    scale,
    dim,
    stride_e_col,
    stride_w_col,
    acc_dtype: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """``exp(s·cos − R)`` of a tile in ``acc_dtype``, in ``[0, 1]``; 0 at targets and outside."""
    inv_e = tl.load(inv_e_ptr + rows, mask=row_ok, other=0.0)
    dots = _tile_dots(
        e_rows,
        w_rows,
        row_ok,
        col_ok,
        dim,
        stride_e_col,
        stride_w_col,
        acc_dtype,
        BLOCK_N,
        BLOCK_C,
        BLOCK_D,
        DOT_PRECISION,
        UPCAST,
    )
    exponent = dots * (inv_e * scale)[:, None] * inv_w[None, :] - lse[:, None]
    keep = row_ok[:, None] & col_ok[None, :] & (cols[None, :] != target[:, None])
    # Excluded entries get exp(-inf) = 0 (their exponent is +inf where R = -inf).
    return tl.exp(tl.where(keep, exponent, float("-inf")))


@triton.jit
def _linear_lse_partial_kernel(
    emb_ptr,
    weight_ptr,
    inv_e_ptr,
    inv_w_ptr,
    target_ptr,
    n_rows,
    n_classes,
    dim,
    stride_e_row,
    stride_e_col,
    stride_w_row,
    stride_w_col,
    scale_hi,
    scale_lo,
    part_max_ptr,
    part_sum_ptr,
    classes_per_split,
    num_splits,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Online log-sum-exp of ``s·cos`` over this split's classes, target columns left out.

    Writes ``(m, σ)`` per row: the running max (``-inf`` when nothing was counted) and
    :math:`\\sigma = \\sum_j e^{z_j - m}` (0 then).
    """
    row_tile = tl.program_id(0)
    split = tl.program_id(1)
    acc_dtype: tl.constexpr = part_max_ptr.dtype.element_ty
    scale = tl.cast(scale_hi, acc_dtype) + tl.cast(scale_lo, acc_dtype)
    rows = row_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    e_rows = emb_ptr + rows.to(tl.int64) * stride_e_row
    row_factor = tl.load(inv_e_ptr + rows, mask=row_ok, other=0.0) * scale
    target = tl.load(target_ptr + rows, mask=row_ok, other=-1)
    class_begin = split * classes_per_split
    class_end = tl.minimum(class_begin + classes_per_split, n_classes)

    running_max = tl.full([BLOCK_N], float("-inf"), acc_dtype)
    running_sum = tl.zeros([BLOCK_N], dtype=acc_dtype)
    for c0 in range(class_begin, class_end, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_ok = cols < class_end
        w_rows = weight_ptr + cols.to(tl.int64) * stride_w_row
        dots = _tile_dots(
            e_rows,
            w_rows,
            row_ok,
            col_ok,
            dim,
            stride_e_col,
            stride_w_col,
            acc_dtype,
            BLOCK_N,
            BLOCK_C,
            BLOCK_D,
            DOT_PRECISION,
            UPCAST,
        )
        inv_w = tl.load(inv_w_ptr + cols, mask=col_ok, other=0.0)
        scaled = dots * row_factor[:, None] * inv_w[None, :]
        keep = col_ok[None, :] & (cols[None, :] != target[:, None])
        scaled = tl.where(keep, scaled, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scaled, axis=1))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        running_sum = running_sum * tl.exp(running_max - shift) + tl.sum(
            tl.exp(scaled - shift[:, None]), axis=1
        )
        running_max = new_max
    slots = rows.to(tl.int64) * num_splits + split
    tl.store(part_max_ptr + slots, running_max, mask=row_ok)
    tl.store(part_sum_ptr + slots, running_sum, mask=row_ok)


@triton.jit
def _linear_grad_embeddings_kernel(
    emb_ptr,
    weight_ptr,
    inv_e_ptr,
    inv_w_ptr,
    target_ptr,
    n_rows,
    n_classes,
    dim,
    stride_e_row,
    stride_e_col,
    stride_w_row,
    stride_w_col,
    scale_hi,
    scale_lo,
    lse_ptr,
    partial_ptr,
    classes_per_split,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """``partial[split, rows] = Σ_{class tiles of the split} E Ŵ`` (no coefficient, no atomics).

    ``partial`` is a zeroed contiguous ``(splits, N, D)`` accumulation-dtype buffer; this
    program is the only one touching its ``(split, rows)`` block.
    """
    row_tile = tl.program_id(0)
    split = tl.program_id(1)
    acc_dtype: tl.constexpr = lse_ptr.dtype.element_ty
    dot_dtype: tl.constexpr = acc_dtype if UPCAST else emb_ptr.dtype.element_ty
    scale = tl.cast(scale_hi, acc_dtype) + tl.cast(scale_lo, acc_dtype)
    rows = row_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    e_rows = emb_ptr + rows.to(tl.int64) * stride_e_row
    out_rows = partial_ptr + (split.to(tl.int64) * n_rows + rows.to(tl.int64)) * dim
    target = tl.load(target_ptr + rows, mask=row_ok, other=-1)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    class_begin = split * classes_per_split
    class_end = tl.minimum(class_begin + classes_per_split, n_classes)
    offsets = tl.arange(0, BLOCK_D)
    for c0 in range(class_begin, class_end, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_ok = cols < class_end
        w_rows = weight_ptr + cols.to(tl.int64) * stride_w_row
        inv_w = tl.load(inv_w_ptr + cols, mask=col_ok, other=0.0)
        probs = _row_softmax_block(
            e_rows,
            w_rows,
            rows,
            cols,
            row_ok,
            col_ok,
            inv_e_ptr,
            inv_w,
            target,
            lse,
            scale,
            dim,
            stride_e_col,
            stride_w_col,
            acc_dtype,
            BLOCK_N,
            BLOCK_C,
            BLOCK_D,
            DOT_PRECISION,
            UPCAST,
        ).to(dot_dtype)
        if tl.max(tl.max(probs.to(acc_dtype), axis=1), axis=0) > 0:
            for d0 in range(0, dim, BLOCK_D):
                d = d0 + offsets
                d_ok = d < dim
                w = _load_slice(w_rows, col_ok, d, d_ok, stride_w_col)
                unit_w = (w.to(acc_dtype) * inv_w[:, None]).to(dot_dtype)
                mask = row_ok[:, None] & d_ok[None, :]
                out = out_rows[:, None] + d[None, :]
                total = tl.load(out, mask=mask, other=0.0)
                total += tl.dot(probs, unit_w, input_precision=DOT_PRECISION).to(acc_dtype)
                tl.store(out, total, mask=mask)


@triton.jit
def _linear_grad_weight_kernel(
    emb_ptr,
    weight_ptr,
    inv_e_ptr,
    inv_w_ptr,
    target_ptr,
    n_rows,
    n_classes,
    dim,
    stride_e_row,
    stride_e_col,
    stride_w_row,
    stride_w_col,
    scale_hi,
    scale_lo,
    lse_ptr,
    coef_ptr,
    accum_ptr,
    out_ptr,
    grad_e_ptr,
    norm_floor,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    FUSE_EMBEDDINGS: tl.constexpr,
):
    """``out[cols] = project(Σ_{row tiles} γ · (E ⊙ c/γ)ᵀ Ê)`` for one class tile.

    ``accum`` is a zeroed contiguous ``(C, D)`` accumulation-dtype buffer (``out`` itself when
    the weight has that dtype), written by this program only; the epilogue applies
    :math:`g \\leftarrow (g - (g\\cdot\\hat w)\\hat w)\\,b` (only the division for weights whose
    inverse norm reached ``norm_floor``) and stores ``out`` ``(C, D)`` contiguous. With
    ``FUSE_EMBEDDINGS`` the program also adds ``E Ŵ_tile`` into the zeroed ``(N, D)``
    ``grad_e`` with relaxed atomic adds (the fast, not bitwise repeatable, path: one pass
    instead of two); without it ``grad_e`` is not touched.
    """
    class_tile = tl.program_id(0)
    acc_dtype: tl.constexpr = lse_ptr.dtype.element_ty
    dot_dtype: tl.constexpr = acc_dtype if UPCAST else emb_ptr.dtype.element_ty
    out_dtype: tl.constexpr = out_ptr.dtype.element_ty
    scale = tl.cast(scale_hi, acc_dtype) + tl.cast(scale_lo, acc_dtype)
    cols = class_tile * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < n_classes
    w_rows = weight_ptr + cols.to(tl.int64) * stride_w_row
    accum_rows = accum_ptr + cols.to(tl.int64) * dim
    inv_w = tl.load(inv_w_ptr + cols, mask=col_ok, other=0.0)
    offsets = tl.arange(0, BLOCK_D)
    for r0 in range(0, n_rows, BLOCK_N):
        rows = r0 + tl.arange(0, BLOCK_N)
        row_ok = rows < n_rows
        e_rows = emb_ptr + rows.to(tl.int64) * stride_e_row
        target = tl.load(target_ptr + rows, mask=row_ok, other=-1)
        lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
        coef = tl.load(coef_ptr + rows, mask=row_ok, other=0.0)
        inv_e = tl.load(inv_e_ptr + rows, mask=row_ok, other=0.0)
        probs = _row_softmax_block(
            e_rows,
            w_rows,
            rows,
            cols,
            row_ok,
            col_ok,
            inv_e_ptr,
            inv_w,
            target,
            lse,
            scale,
            dim,
            stride_e_col,
            stride_w_col,
            acc_dtype,
            BLOCK_N,
            BLOCK_C,
            BLOCK_D,
            DOT_PRECISION,
            UPCAST,
        )
        # The rows' coefficients relative to the tile's largest: the operand stays in [-1, 1].
        gamma = tl.max(tl.abs(coef), axis=0)
        ratio = coef / tl.where(gamma > 0, gamma, 1.0)
        weighted = (probs * ratio[:, None]).to(dot_dtype)
        probs = probs.to(dot_dtype)
        # |E c/γ| <= E: a tile whose E rounds to zero adds nothing to either gradient.
        if tl.max(tl.max(probs.to(acc_dtype), axis=1), axis=0) > 0:
            for d0 in range(0, dim, BLOCK_D):
                d = d0 + offsets
                d_ok = d < dim
                e = _load_slice(e_rows, row_ok, d, d_ok, stride_e_col)
                unit_e = (e.to(acc_dtype) * inv_e[:, None]).to(dot_dtype)
                mask = col_ok[:, None] & d_ok[None, :]
                acc = accum_rows[:, None] + d[None, :]
                total = tl.load(acc, mask=mask, other=0.0)
                part = tl.dot(tl.trans(weighted), unit_e, input_precision=DOT_PRECISION)
                total += part.to(acc_dtype) * gamma
                tl.store(acc, total, mask=mask)
                if FUSE_EMBEDDINGS:
                    w = _load_slice(w_rows, col_ok, d, d_ok, stride_w_col)
                    unit_w = (w.to(acc_dtype) * inv_w[:, None]).to(dot_dtype)
                    grad_e = tl.dot(probs, unit_w, input_precision=DOT_PRECISION)
                    tl.atomic_add(
                        grad_e_ptr + rows.to(tl.int64)[:, None] * dim + d[None, :],
                        grad_e.to(acc_dtype),
                        mask=row_ok[:, None] & d_ok[None, :],
                        sem="relaxed",
                    )
    # Epilogue: through the normalisation, g ← (g − (g·ŵ) ŵ) b, a BLOCK_D slice at a time.
    along = tl.zeros([BLOCK_C], dtype=acc_dtype)
    for d0 in range(0, dim, BLOCK_D):
        d = d0 + offsets
        d_ok = d < dim
        mask = col_ok[:, None] & d_ok[None, :]
        grad = tl.load(accum_rows[:, None] + d[None, :], mask=mask, other=0.0)
        unit_w = _load_slice(w_rows, col_ok, d, d_ok, stride_w_col).to(acc_dtype) * inv_w[:, None]
        along += tl.sum(grad * unit_w, axis=1)
    along = tl.where(inv_w < norm_floor, along, 0.0)
    out_rows = out_ptr + cols.to(tl.int64) * dim
    for d0 in range(0, dim, BLOCK_D):
        d = d0 + offsets
        d_ok = d < dim
        mask = col_ok[:, None] & d_ok[None, :]
        grad = tl.load(accum_rows[:, None] + d[None, :], mask=mask, other=0.0)
        unit_w = _load_slice(w_rows, col_ok, d, d_ok, stride_w_col).to(acc_dtype) * inv_w[:, None]
        grad = (grad - along[:, None] * unit_w) * inv_w[:, None]
        tl.store(out_rows[:, None] + d[None, :], grad.to(out_dtype), mask=mask)


# ---------------------------------------------------------------------------------------------
# Launch choices
# ---------------------------------------------------------------------------------------------


def _interpreted() -> bool:
    return _launch.kernel_mode(_linear_lse_partial_kernel) != "compiled"


def linear_launch_options(
    dtype: torch.dtype, compiled: bool, tiles: tuple[int, int, int, int] | None = None
) -> dict:
    """The kernels' tile sizes, ``num_warps`` and dot options for inputs of ``dtype``.

    ``compiled`` (a GPU launch) picks :data:`CUDA_TILES`, else :data:`INTERPRETER_TILES`;
    ``tiles`` ``(BLOCK_N, BLOCK_C, BLOCK_D, num_warps)`` overrides both (tests). ``UPCAST`` is
    the interpreter's bfloat16 workaround, off for compiled launches.

    Example:
        >>> options = linear_launch_options(torch.float16, compiled=True)
        >>> options["BLOCK_C"], options["DOT_PRECISION"], options["UPCAST"]
        (128, 'tf32', False)
    """
    if tiles is None:
        tiles = CUDA_TILES[torch.finfo(dtype).bits // 8] if compiled else INTERPRETER_TILES
    block_n, block_c, block_d, num_warps = tiles
    return {
        "BLOCK_N": block_n,
        "BLOCK_C": block_c,
        "BLOCK_D": block_d,
        "num_warps": num_warps,
        "DOT_PRECISION": {torch.float32: "tf32x3", torch.float64: "ieee"}.get(dtype, "tf32"),
        "UPCAST": dtype == torch.bfloat16 and not compiled,
        "enable_fp_fusion": True,
    }


def linear_grids(
    n_rows: int,
    n_classes: int,
    options: dict,
    wanted_programs: int = 1,
    num_splits: int | None = None,
) -> dict[str, tuple[tuple[int, ...], int]]:
    """The grid of every launch of the linear op, with its classes per split.

    ``{"forward": ((row tiles, splits), classes_per_split), "grad_embeddings": (…),
    "grad_weight": ((class tiles,), n_classes)}``: rows and classes tiles on axis 0 (below 2³¹
    for any N, C below 2³¹·16), splits on axis 1 (at most 65,535); every grid passes
    :func:`marginkit.ops._launch.check_grid`.

    Example:
        >>> options = linear_launch_options(torch.float16, compiled=True)
        >>> grids = linear_grids(1_000_000, 10_000_000, options, wanted_programs=528)
        >>> grids["forward"][0], grids["grad_weight"][0]
        ((15625, 1), (78125,))
    """
    row_tiles = _launch.cdiv(n_rows, options["BLOCK_N"])
    classes_per_split, splits = _launch.split_columns(
        row_tiles, n_classes, options["BLOCK_C"], wanted_programs, num_splits
    )
    split_grid = _launch.check_grid((row_tiles, splits))
    class_grid = _launch.check_grid((_launch.cdiv(n_classes, options["BLOCK_C"]),))
    return {
        "forward": (split_grid, classes_per_split),
        "grad_embeddings": (split_grid, classes_per_split),
        "grad_weight": (class_grid, n_classes),
    }


def _grids(embeddings: Tensor, n_classes: int, options: dict, num_splits: int | None) -> dict:
    wanted = _launch.wanted_programs(embeddings.device, not _interpreted())
    return linear_grids(embeddings.shape[0], n_classes, options, wanted, num_splits)


def _common_arguments(
    embeddings: Tensor,
    weight: Tensor,
    inv_norm_embeddings: Tensor,
    inv_norm_weight: Tensor,
    target_col: Tensor,
    scale: float,
) -> tuple:
    """The arguments every kernel starts with (both strides of both matrices: no copies)."""
    acc = accumulation_dtype(weight.dtype)
    return (
        embeddings,
        weight,
        inv_norm_embeddings.to(acc).contiguous(),
        inv_norm_weight.to(acc).contiguous(),
        _launch.column_index(target_col, weight.shape[0]),
        embeddings.shape[0],
        weight.shape[0],
        embeddings.shape[1],
        *embeddings.stride(),
        *weight.stride(),
        *_launch.split_float(scale),
    )


# ---------------------------------------------------------------------------------------------
# Host launchers (the bodies of the triton_ops) and the twins' entry points
# ---------------------------------------------------------------------------------------------


def _forward(
    embeddings: Tensor,
    weight: Tensor,
    inv_norm_embeddings: Tensor,
    inv_norm_weight: Tensor,
    target_col: Tensor,
    scale: float,
    tiles: list[int] | None,
    num_splits: int | None,
) -> Tensor:
    """The body of ``marginkit::triton_linear_logsumexp``."""
    acc = accumulation_dtype(weight.dtype)
    n_rows, n_classes = embeddings.shape[0], weight.shape[0]
    device = embeddings.device
    if n_rows == 0 or n_classes == 0:
        return torch.full((n_rows,), float("-inf"), dtype=acc, device=device)
    options = linear_launch_options(weight.dtype, not _interpreted(), _tiles(tiles))
    grid, classes_per_split = _grids(embeddings, n_classes, options, num_splits)["forward"]
    part_max = torch.empty(n_rows, grid[1], dtype=acc, device=device)
    part_sum = torch.empty(n_rows, grid[1], dtype=acc, device=device)
    with _launch.device_guard(embeddings):
        _launch.traceable(_linear_lse_partial_kernel, embeddings)[grid](
            *_common_arguments(
                embeddings, weight, inv_norm_embeddings, inv_norm_weight, target_col, scale
            ),
            part_max,
            part_sum,
            classes_per_split,
            grid[1],
            **options,
        )
    # Combine the splits: R = M + log Σ_k σ_k e^{m_k − M} (M = -inf: nothing counted, R = -inf).
    row_max = part_max.amax(dim=1)
    shift = torch.where(row_max == float("-inf"), 0.0, row_max)
    return shift + torch.log((part_sum * torch.exp(part_max - shift[:, None])).sum(dim=1))


def _backward(
    embeddings: Tensor,
    weight: Tensor,
    inv_norm_embeddings: Tensor,
    inv_norm_weight: Tensor,
    target_col: Tensor,
    lse: Tensor,
    row_coef: Tensor,
    scale: float,
    tiles: list[int] | None,
    num_splits: int | None,
    deterministic: bool,
) -> tuple[Tensor, Tensor]:
    """The body of ``marginkit::triton_linear_logsumexp_backward``."""
    acc = accumulation_dtype(weight.dtype)
    (n_rows, dim), n_classes = embeddings.shape, weight.shape[0]
    device = embeddings.device
    if n_rows == 0 or n_classes == 0 or dim == 0:
        return (
            torch.zeros(n_rows, dim, dtype=acc, device=device),
            torch.zeros(n_classes, dim, dtype=weight.dtype, device=device),
        )
    options = linear_launch_options(weight.dtype, not _interpreted(), _tiles(tiles))
    grids = _grids(embeddings, n_classes, options, num_splits)
    grid_e, classes_per_split = grids["grad_embeddings"]
    common = _common_arguments(
        embeddings, weight, inv_norm_embeddings, inv_norm_weight, target_col, scale
    )
    lse = lse.to(acc).contiguous()
    row_coef = row_coef.to(acc).contiguous()
    # Deterministic: the embedding pass writes per-split partials. Fast: the weight pass adds
    # the embedding gradient with relaxed atomics into one (N, D) buffer.
    fused = not deterministic
    partial = torch.zeros(1 if fused else grid_e[1], n_rows, dim, dtype=acc, device=device)
    accum = torch.zeros(n_classes, dim, dtype=acc, device=device)
    grad_weight = accum if weight.dtype == acc else torch.empty_like(accum, dtype=weight.dtype)
    with _launch.device_guard(embeddings):
        if not fused:
            _launch.traceable(_linear_grad_embeddings_kernel, embeddings)[grid_e](
                *common, lse, partial, classes_per_split, **options
            )
        _launch.traceable(_linear_grad_weight_kernel, embeddings)[grids["grad_weight"][0]](
            *common,
            lse,
            row_coef,
            accum,
            grad_weight,
            partial,
            1.0 / NORM_EPS,
            FUSE_EMBEDDINGS=fused,
            **options,
        )
    # The splits in a fixed order, then each row's coefficient in the accumulation dtype.
    grad_unit_embeddings = partial.sum(dim=0) if partial.shape[0] > 1 else partial[0]
    return grad_unit_embeddings.mul_(row_coef[:, None]), grad_weight


def _tiles(tiles: list[int] | None) -> tuple[int, int, int, int] | None:
    return None if tiles is None else tuple(tiles)


torch.library.triton_op("marginkit::triton_linear_logsumexp", mutates_args=())(_forward)
torch.library.triton_op("marginkit::triton_linear_logsumexp_backward", mutates_args=())(_backward)


def row_logsumexp_linear(
    embeddings: Tensor,
    weight: Tensor,
    inv_norm_embeddings: Tensor,
    inv_norm_weight: Tensor,
    target_col: Tensor,
    scale: float,
    chunk_size: int | None = None,
    *,
    tiles: tuple | None = None,
    num_splits: int | None = None,
) -> Tensor:
    r"""Row log-sum-exp of the scaled cosines without the target column (Triton).

    Interface and maths: :meth:`marginkit.ops._kernels.LinearKernels.row_logsumexp_linear`;
    ``chunk_size`` (the CPU block) is not used: the tiles are fixed per dtype. ``tiles``
    ``(BLOCK_N, BLOCK_C, BLOCK_D, num_warps)`` and ``num_splits`` override the launch (tests).

    Example:
        >>> import torch
        >>> from marginkit.ops._triton import interpreter_enabled
        >>> if interpreter_enabled():
        ...     e, w = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 3.0]])
        ...     lse = row_logsumexp_linear(e, w, 1 / e.norm(dim=1), 1 / w.norm(dim=1),
        ...                                torch.tensor([-1]), 1.0)
        ...     assert torch.allclose(lse, torch.tensor([1.0]).exp().add(1.0).log())
    """
    _launch.check_launchable(embeddings, _linear_lse_partial_kernel)
    return torch.ops.marginkit.triton_linear_logsumexp(
        embeddings,
        weight,
        inv_norm_embeddings,
        inv_norm_weight,
        target_col,
        scale,
        None if tiles is None else list(tiles),
        num_splits,
    )


def row_logsumexp_linear_backward(
    embeddings: Tensor,
    weight: Tensor,
    inv_norm_embeddings: Tensor,
    inv_norm_weight: Tensor,
    target_col: Tensor,
    lse: Tensor,
    row_coef: Tensor,
    scale: float,
    chunk_size: int | None = None,
    *,
    tiles: tuple | None = None,
    num_splits: int | None = None,
    deterministic: bool | None = None,
) -> tuple[Tensor, Tensor]:
    r"""``c ⊙ (E Ŵ)`` and the projected ``Pᵀ Ê`` (Triton).

    Interface and maths: :meth:`marginkit.ops._kernels.LinearKernels.row_logsumexp_linear_backward`
    (``chunk_size`` unused; ``tiles`` and ``num_splits`` as in :func:`row_logsumexp_linear`).
    ``deterministic`` (default: ``torch.are_deterministic_algorithms_enabled()``) picks the two
    atomics-free passes, bitwise repeatable; otherwise one pass adds the embedding gradient
    with relaxed atomic adds (its last bits vary between runs; the weight gradient never uses
    atomics).

    Example:
        >>> import torch
        >>> from marginkit.ops._triton import interpreter_enabled
        >>> if interpreter_enabled():
        ...     e, w = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        ...     one, two = torch.ones(1), torch.ones(2)
        ...     lse = row_logsumexp_linear(e, w, one, two, torch.tensor([0]), 1.0)
        ...     ge, gw = row_logsumexp_linear_backward(e, w, one, two, torch.tensor([0]), lse,
        ...                                            one, 1.0)
        ...     assert ge.tolist() == [[0.0, 1.0]] and gw.tolist() == [[0.0, 0.0], [1.0, 0.0]]
    """
    _launch.check_launchable(embeddings, _linear_lse_partial_kernel)
    return torch.ops.marginkit.triton_linear_logsumexp_backward(
        embeddings,
        weight,
        inv_norm_embeddings,
        inv_norm_weight,
        target_col,
        lse,
        row_coef,
        scale,
        None if tiles is None else list(tiles),
        num_splits,
        torch.are_deterministic_algorithms_enabled() if deterministic is None else deterministic,
    )
