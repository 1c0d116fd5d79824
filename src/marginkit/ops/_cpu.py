r"""Chunked-torch kernels for the N×C part of the fused margin cross-entropy.

The twins of :mod:`marginkit.ops._triton` (same signatures, same results): the margin arithmetic
happens on N-length vectors elsewhere (:mod:`marginkit.ops._margin`), and the two passes over
the N×C cosine matrix are margin-agnostic:

* :func:`row_logsumexp_excluding_target` (forward)

  .. math:: \mathrm{lse}_i = \log \sum_{j \ne t_i} e^{s\,x_{ij}}

* :func:`write_row_softmax` (backward, and the optional softmax output)

  .. math:: y_{ij} = c_i\, e^{s\,x_{ij} - \mathrm{lse}_i} \ (j \ne t_i), \qquad y_{i t_i} = v_i

Rows are processed in chunks so that every temporary is bounded by ``_CHUNK_BYTES`` whatever
N×C is; :func:`write_row_softmax` uses the output itself as its scratch when ``out`` has the
accumulation dtype, so a forward plus backward allocates exactly one N×C buffer (the gradient).
Plain torch ops only: the same code runs on any device (it is the ``impl="torch"`` path on CUDA).
"""

from __future__ import annotations

import torch
from torch import Tensor

from marginkit.ops._dtypes import accumulation_dtype

__all__ = ["row_logsumexp_excluding_target", "write_row_softmax"]

# Upper bound of the per-chunk scratch (accumulation dtype). A chunk of this size stays in the
# last-level cache while the 4-5 elementwise passes over it run, and is big enough for torch's
# intra-op parallelism (grain 32768 elements) to use every thread.
_CHUNK_BYTES = 4 * 1024 * 1024


def _rows_per_chunk(n_cols: int, acc_dtype: torch.dtype) -> int:
    element_size = torch.finfo(acc_dtype).bits // 8
    return max(1, _CHUNK_BYTES // max(1, n_cols * element_size))


class _ChunkTargets:
    """The target positions ``(row, col)`` with ``0 <= col < C``, split by chunk of rows.

    One ``nonzero`` and one host read of the chunk boundaries per call (not per chunk).
    """

    def __init__(self, target_col: Tensor, n_rows: int, n_cols: int, chunk_rows: int) -> None:
        has_target = (target_col >= 0) & (target_col < n_cols)
        self.rows = has_target.nonzero()[:, 0]
        self.cols = target_col[self.rows]
        starts = torch.arange(0, n_rows + chunk_rows, chunk_rows, device=target_col.device)
        self.bounds = torch.searchsorted(self.rows, starts).tolist()
        self.chunk_rows = chunk_rows

    def fill(self, chunk: Tensor, begin: int, value: float | Tensor) -> None:
        """Write ``value`` (a scalar, or a vector over all N rows) at the targets of a chunk."""
        index = begin // self.chunk_rows
        lo, hi = self.bounds[index], self.bounds[index + 1]
        if lo == hi:
            return
        rows, cols = self.rows[lo:hi], self.cols[lo:hi]
        if isinstance(value, Tensor):
            chunk[rows - begin, cols] = value[rows].to(chunk.dtype)
        else:
            chunk[rows - begin, cols] = value


def row_logsumexp_excluding_target(logits: Tensor, target_col: Tensor, scale: float) -> Tensor:
    r"""Row log-sum-exp of the scaled logits, leaving out each row's target column.

    .. math::
        \mathrm{lse}_i = \log \sum_{j \ne t_i} \exp(s \cdot x_{ij})

    Per chunk of rows: ``z = s·x`` in the accumulation dtype, ``z[i, t_i] = -inf``, the max ``M``
    of each row, ``log Σ exp(z − M) + M``. A ``t_i`` outside ``[0, C)`` excludes nothing; a row
    whose every column is excluded gets ``-inf``.

    Args:
        logits: ``(N, C)`` float16 / bfloat16 / float32 / float64.
        target_col: ``(N,)`` int64 column to leave out per row.
        scale: the factor ``s`` applied to every logit.

    Returns:
        ``(N,)`` float32 (float64 for float64 ``logits``).

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0, 1.0, 0.0]])
        >>> lse = row_logsumexp_excluding_target(x, torch.tensor([1]), 1.0)
        >>> torch.allclose(lse, torch.tensor([2.0]).log())
        True
    """
    n_rows, n_cols = logits.shape
    acc_dtype = accumulation_dtype(logits.dtype)
    lse = torch.empty(n_rows, dtype=acc_dtype, device=logits.device)
    if n_rows == 0:
        return lse
    if n_cols == 0:
        return lse.fill_(float("-inf"))
    chunk_rows = min(n_rows, _rows_per_chunk(n_cols, acc_dtype))
    scratch = torch.empty(chunk_rows, n_cols, dtype=acc_dtype, device=logits.device)
    targets = _ChunkTargets(target_col, n_rows, n_cols, chunk_rows)
    for begin in range(0, n_rows, chunk_rows):
        end = min(begin + chunk_rows, n_rows)
        scaled = scratch[: end - begin]
        if logits.dtype == acc_dtype:
            torch.mul(logits[begin:end], scale, out=scaled)
        else:
            scaled.copy_(logits[begin:end]).mul_(scale)
        targets.fill(scaled, begin, float("-inf"))
        row_max = scaled.amax(dim=1)
        # A row with nothing left has max -inf: shift by 0 so that exp(-inf - 0) = 0, log 0 = -inf.
        shift = torch.where(row_max == float("-inf"), torch.zeros_like(row_max), row_max)
        scaled.sub_(shift[:, None]).exp_()
        torch.add(shift, scaled.sum(dim=1).log_(), out=lse[begin:end])
    return lse


def write_row_softmax(
    logits: Tensor,
    target_col: Tensor,
    lse: Tensor,
    row_coef: Tensor,
    target_value: Tensor,
    scale: float,
    out: Tensor,
) -> Tensor:
    r"""Write the row-scaled softmax of the scaled logits, with a given value in the target column.

    .. math::
        y_{ij} = c_i \exp(s \cdot x_{ij} - \mathrm{lse}_i) \quad (j \ne t_i), \qquad
        y_{i t_i} = v_i \quad (0 \le t_i < C)

    The maths runs in float32 (float64 for float64 ``logits``); the result is stored in
    ``out.dtype`` after saturating to its finite range (``±65504`` for float16), so an overflow
    gives the largest finite value, never ``inf`` (NaN stays NaN). When ``out`` has the
    accumulation dtype it is its own scratch; otherwise one bounded chunk buffer is used.

    Args:
        logits: ``(N, C)`` float16 / bfloat16 / float32 / float64.
        target_col: ``(N,)`` int64 target column per row (outside ``[0, C)``: none).
        lse: ``(N,)`` accumulation-dtype row log-sum-exp subtracted in the exponent.
        row_coef: ``(N,)`` accumulation-dtype factor ``c_i`` of each row.
        target_value: ``(N,)`` accumulation-dtype value ``v_i`` written at the target column.
        scale: the factor ``s`` applied to every logit.
        out: ``(N, C)`` float tensor receiving ``y``.

    Returns:
        ``out``.

    Example:
        >>> import torch
        >>> x, t = torch.zeros(1, 3), torch.tensor([1])
        >>> lse = torch.tensor([2.0]).log()
        >>> one, v = torch.ones(1), torch.tensor([-1.0])
        >>> write_row_softmax(x, t, lse, one, v, 1.0, torch.empty(1, 3)).tolist()
        [[0.5, -1.0, 0.5]]
    """
    n_rows, n_cols = logits.shape
    if n_rows == 0 or n_cols == 0:
        return out
    acc_dtype = accumulation_dtype(logits.dtype)
    finite_max = min(torch.finfo(out.dtype).max, torch.finfo(acc_dtype).max)
    neg_lse = lse.to(acc_dtype).neg()[:, None]
    row_coef = row_coef.to(acc_dtype)[:, None]
    target_value = target_value.to(acc_dtype)
    chunk_rows = min(n_rows, _rows_per_chunk(n_cols, acc_dtype))
    in_place = out.dtype == acc_dtype
    scratch = (
        None if in_place else torch.empty(chunk_rows, n_cols, dtype=acc_dtype, device=logits.device)
    )
    targets = _ChunkTargets(target_col, n_rows, n_cols, chunk_rows)
    for begin in range(0, n_rows, chunk_rows):
        end = min(begin + chunk_rows, n_rows)
        values = out[begin:end] if scratch is None else scratch[: end - begin]
        # s·x − lse in one pass (x is promoted to the accumulation dtype on the fly).
        torch.add(neg_lse[begin:end], logits[begin:end], alpha=scale, out=values)
        values.exp_().mul_(row_coef[begin:end])
        targets.fill(values, begin, target_value)
        values.clamp_(-finite_max, finite_max)
        if scratch is not None:
            out[begin:end].copy_(values)
    return out
