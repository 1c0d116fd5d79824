r"""Triton kernels of the normalised-linear log-sum-exp (CUDA; CPU under ``TRITON_INTERPRET=1``).

The twins of :mod:`marginkit.ops._linear_cpu` (same signatures, same results), after Apple's Cut
Cross-Entropy: 2-D tiles of ``BLOCK_N`` rows × ``BLOCK_C`` classes whose cosines are computed
with ``tl.dot`` (tensor cores for float16 / bfloat16, fp32 accumulation; ``tf32x3`` for float32,
about float32 accuracy; ``ieee`` for float64) over ``BLOCK_D`` slices of the embedding
dimension, and never stored:

* forward, :func:`row_logsumexp_linear`: program (row tile, class split) walks its classes
  tile by tile with an online log-sum-exp (running max and sum per row) and writes one
  ``(max, sum)`` pair per row; a second step combines the splits
  (:math:`R = M + \log\sum_k \sigma_k e^{m_k - M}`);
* backward, :func:`row_logsumexp_linear_backward`: program (row tile, class tile) recomputes
  its cosines, forms :math:`P = c\,e^{s x - R}` (0 at the target) and adds
  :math:`P\hat W_{tile}` into the ``(N, D)`` and :math:`P^\top\hat E_{tile}` into the ``(C, D)``
  fp32 (fp64) gradient with atomic adds, one ``BLOCK_D`` slice at a time; the weight gradient
  then goes through the normalisation's backward in torch. Atomic adds make the summation
  order, hence the last bits, vary between runs.

The cosine of a tile is the dot product of the *raw* rows scaled by both inverse norms after the
fp32 accumulation (no rounding of normalised inputs in the forward); in the backward the tiles
fed to ``tl.dot`` are normalised first (every value in ``[-1, 1]``, so nothing overflows float16)
and :math:`P` is rounded to the input dtype, as flash-attention does with its probabilities.

Interpreter: numpy has no bfloat16 and the interpreter's bfloat16 ``tl.dot`` returns garbage, so
under the interpreter bfloat16 tiles are converted to float32 just before the dot (``UPCAST``);
compiled kernels use bfloat16 tensor cores. See :mod:`marginkit.ops._triton` for when the
interpreter is on (``TRITON_INTERPRET=1`` before ``triton`` is first imported).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from marginkit.ops._dtypes import accumulation_dtype
from marginkit.ops._linear_cpu import project_to_tangent_
from marginkit.ops._triton import _check_launchable, _split_columns, _split_float

__all__ = ["row_logsumexp_linear", "row_logsumexp_linear_backward"]

# Tiles (BLOCK_N, BLOCK_C, BLOCK_D, num_warps) by element size on CUDA: 64 × 128 × 64 half tiles
# are the usual tensor-core shape; float32 (tf32x3) and float64 use smaller tiles to stay within
# registers. Untuned: no GPU measured them yet.
_CUDA_TILES = {2: (64, 128, 64, 8), 4: (64, 64, 32, 4), 8: (32, 32, 16, 4)}
# Under the interpreter every tile is one numpy call: the smallest tl.dot shape.
_INTERPRETER_TILES = (16, 16, 16, 1)
# Classes per step of the weight-gradient projection after the backward kernel.
_PROJECTION_BLOCK = 8192


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _load_slice(matrix_ptr, rows, row_ok, d, d_ok, stride):
    """``matrix[rows, d]`` of a row-major matrix, 0 outside ``row_ok × d_ok``."""
    return tl.load(
        matrix_ptr + rows.to(tl.int64)[:, None] * stride + d[None, :],
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )


@triton.jit
def _tile_dots(
    emb_ptr,
    weight_ptr,
    rows,
    cols,
    row_ok,
    col_ok,
    dim,
    stride_e,
    stride_w,
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
        e = _load_slice(emb_ptr, rows, row_ok, d, d_ok, stride_e)
        w = _load_slice(weight_ptr, cols, col_ok, d, d_ok, stride_w)
        if UPCAST:
            e = e.to(acc_dtype)
            w = w.to(acc_dtype)
        dots = tl.dot(e, tl.trans(w), acc=dots, input_precision=DOT_PRECISION)
    return dots


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
    stride_e,
    stride_w,
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
    row_factor = tl.load(inv_e_ptr + rows, mask=row_ok, other=0.0) * scale
    target = tl.load(target_ptr + rows, mask=row_ok, other=-1)
    class_begin = split * classes_per_split
    class_end = tl.minimum(class_begin + classes_per_split, n_classes)

    running_max = tl.full([BLOCK_N], float("-inf"), acc_dtype)
    running_sum = tl.zeros([BLOCK_N], dtype=acc_dtype)
    for c0 in range(class_begin, class_end, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        col_ok = cols < class_end
        dots = _tile_dots(
            emb_ptr,
            weight_ptr,
            rows,
            cols,
            row_ok,
            col_ok,
            dim,
            stride_e,
            stride_w,
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
def _linear_lse_backward_kernel(
    emb_ptr,
    weight_ptr,
    inv_e_ptr,
    inv_w_ptr,
    target_ptr,
    n_rows,
    n_classes,
    dim,
    stride_e,
    stride_w,
    scale_hi,
    scale_lo,
    lse_ptr,
    coef_ptr,
    grad_e_ptr,
    grad_w_ptr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """``grad_e += P Ŵ_tile``, ``grad_w += Pᵀ Ê_tile`` for one tile of rows × classes.

    ``P = c · exp(s·cos − R)`` off target, 0 at the target and outside the matrix. The
    gradients are contiguous ``(N, D)`` / ``(C, D)`` buffers in the accumulation dtype.
    """
    row_tile = tl.program_id(0)
    class_tile = tl.program_id(1)
    acc_dtype: tl.constexpr = lse_ptr.dtype.element_ty
    dot_dtype: tl.constexpr = acc_dtype if UPCAST else emb_ptr.dtype.element_ty
    scale = tl.cast(scale_hi, acc_dtype) + tl.cast(scale_lo, acc_dtype)
    rows = row_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = class_tile * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < n_rows
    col_ok = cols < n_classes
    inv_e = tl.load(inv_e_ptr + rows, mask=row_ok, other=0.0)
    inv_w = tl.load(inv_w_ptr + cols, mask=col_ok, other=0.0)
    target = tl.load(target_ptr + rows, mask=row_ok, other=-1)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    coef = tl.load(coef_ptr + rows, mask=row_ok, other=0.0)

    dots = _tile_dots(
        emb_ptr,
        weight_ptr,
        rows,
        cols,
        row_ok,
        col_ok,
        dim,
        stride_e,
        stride_w,
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
    exponent = tl.where(keep, exponent, float("-inf"))
    p = (coef[:, None] * tl.exp(exponent)).to(dot_dtype)

    offsets = tl.arange(0, BLOCK_D)
    for d0 in range(0, dim, BLOCK_D):
        d = d0 + offsets
        d_ok = d < dim
        e = _load_slice(emb_ptr, rows, row_ok, d, d_ok, stride_e)
        w = _load_slice(weight_ptr, cols, col_ok, d, d_ok, stride_w)
        unit_e = (e.to(acc_dtype) * inv_e[:, None]).to(dot_dtype)
        unit_w = (w.to(acc_dtype) * inv_w[:, None]).to(dot_dtype)
        grad_e = tl.dot(p, unit_w, input_precision=DOT_PRECISION)
        grad_w = tl.dot(tl.trans(p), unit_e, input_precision=DOT_PRECISION)
        tl.atomic_add(
            grad_e_ptr + rows.to(tl.int64)[:, None] * dim + d[None, :],
            grad_e.to(acc_dtype),
            mask=row_ok[:, None] & d_ok[None, :],
        )
        tl.atomic_add(
            grad_w_ptr + cols.to(tl.int64)[:, None] * dim + d[None, :],
            grad_w.to(acc_dtype),
            mask=col_ok[:, None] & d_ok[None, :],
        )


# ---------------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------------


def _interpreted() -> bool:
    return not isinstance(_linear_lse_partial_kernel, triton.runtime.JITFunction)


def _launch_options(weight: Tensor, tiles: tuple | None) -> dict:
    """The kernels' tile sizes, ``num_warps`` and dot options for ``weight``'s dtype and device.

    ``tiles`` ``(BLOCK_N, BLOCK_C, BLOCK_D, num_warps)`` overrides the choice (tests).
    """
    if tiles is None:
        compiled = weight.device.type == "cuda" and not _interpreted()
        tiles = _CUDA_TILES[weight.element_size()] if compiled else _INTERPRETER_TILES
    block_n, block_c, block_d, num_warps = tiles
    dtype = weight.dtype
    return {
        "BLOCK_N": block_n,
        "BLOCK_C": block_c,
        "BLOCK_D": block_d,
        "num_warps": num_warps,
        "DOT_PRECISION": {torch.float32: "tf32x3", torch.float64: "ieee"}.get(dtype, "tf32"),
        "UPCAST": dtype == torch.bfloat16 and _interpreted(),
    }


def _row_major(matrix: Tensor) -> Tensor:
    return matrix if matrix.stride(1) == 1 or matrix.shape[1] <= 1 else matrix.contiguous()


def _common_arguments(
    embeddings: Tensor,
    weight: Tensor,
    inv_norm_embeddings: Tensor,
    inv_norm_weight: Tensor,
    target_col: Tensor,
    scale: float,
) -> tuple:
    """The arguments both kernels start with, in the layout and dtypes they read."""
    acc = accumulation_dtype(weight.dtype)
    embeddings, weight = _row_major(embeddings), _row_major(weight)
    return (
        embeddings,
        weight,
        inv_norm_embeddings.to(acc).contiguous(),
        inv_norm_weight.to(acc).contiguous(),
        target_col.contiguous(),
        embeddings.shape[0],
        weight.shape[0],
        embeddings.shape[1],
        embeddings.stride(0),
        weight.stride(0),
        *_split_float(scale),
    )


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

    .. math:: R_i = \log \sum_{j \ne t_i} \exp\big(s\,a_i b_j\, e_i \cdot w_j\big)

    Same arguments and result as :func:`marginkit.ops._linear_cpu.row_logsumexp_linear`;
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
    _check_launchable(embeddings)
    acc = accumulation_dtype(weight.dtype)
    n_rows, n_classes = embeddings.shape[0], weight.shape[0]
    device = embeddings.device
    if n_rows == 0 or n_classes == 0:
        return torch.full((n_rows,), float("-inf"), dtype=acc, device=device)
    options = _launch_options(weight, tiles)
    row_tiles = triton.cdiv(n_rows, options["BLOCK_N"])
    classes_per_split, num_splits = _split_columns(
        row_tiles, n_classes, options["BLOCK_C"], device, num_splits
    )
    part_max = torch.empty(n_rows, num_splits, dtype=acc, device=device)
    part_sum = torch.empty(n_rows, num_splits, dtype=acc, device=device)
    _linear_lse_partial_kernel[(row_tiles, num_splits)](
        *_common_arguments(
            embeddings, weight, inv_norm_embeddings, inv_norm_weight, target_col, scale
        ),
        part_max,
        part_sum,
        classes_per_split,
        num_splits,
        **options,
    )
    # Combine the splits: R = M + log Σ_k σ_k e^{m_k − M} (M = -inf: nothing counted, R = -inf).
    row_max = part_max.amax(dim=1)
    shift = torch.where(row_max == float("-inf"), 0.0, row_max)
    return shift + torch.log((part_sum * torch.exp(part_max - shift[:, None])).sum(dim=1))


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
) -> tuple[Tensor, Tensor]:
    r"""``P Ŵ`` and ``Pᵀ Ê`` (through the weights' normalisation), :math:`P = c\,e^{s x - R}`.

    Same arguments and result as
    :func:`marginkit.ops._linear_cpu.row_logsumexp_linear_backward` (``chunk_size`` unused).

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
    _check_launchable(embeddings)
    acc = accumulation_dtype(weight.dtype)
    (n_rows, dim), n_classes = embeddings.shape, weight.shape[0]
    grad_e = torch.zeros(n_rows, dim, dtype=acc, device=embeddings.device)
    grad_w = torch.zeros(n_classes, dim, dtype=acc, device=embeddings.device)
    if n_rows == 0 or n_classes == 0 or dim == 0:
        return grad_e, grad_w
    options = _launch_options(weight, tiles)
    grid = (triton.cdiv(n_rows, options["BLOCK_N"]), triton.cdiv(n_classes, options["BLOCK_C"]))
    _linear_lse_backward_kernel[grid](
        *_common_arguments(
            embeddings, weight, inv_norm_embeddings, inv_norm_weight, target_col, scale
        ),
        lse.to(acc).contiguous(),
        row_coef.to(acc).contiguous(),
        grad_e,
        grad_w,
        **options,
    )
    # Through the weights' normalisation, a block of classes at a time (in place).
    for c0 in range(0, n_classes, _PROJECTION_BLOCK):
        c1 = min(c0 + _PROJECTION_BLOCK, n_classes)
        unit_weight = weight[c0:c1].to(acc) * inv_norm_weight[c0:c1, None].to(acc)
        project_to_tangent_(grad_w[c0:c1], unit_weight, inv_norm_weight[c0:c1].to(acc))
    return grad_e, grad_w.to(weight.dtype)
