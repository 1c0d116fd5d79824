r"""Chunked-torch kernels for the N×C part of :func:`marginkit.ops.target_logsumexp`.

The twins of :mod:`marginkit.ops._triton` (same signatures, same results): the margin arithmetic
happens on N-length vectors elsewhere (:mod:`marginkit.ops._margin`), and the two passes over
the N×C cosine matrix are margin-agnostic:

* :func:`row_statistics_excluding_target` (forward; :func:`row_logsumexp_excluding_target`
  without the row sum)

  .. math:: R_i = \log \sum_{j \ne t_i} e^{s\,x_{ij}}, \qquad
      S_i = \sum_{j \ne t_i,\ \kappa(j) = \rho_i} x_{ij}

* :func:`write_row_softmax` (backward, and the optional softmax output)

  .. math:: y_{ij} = c_i\, e^{s\,x_{ij} - R_i} + a_i [\kappa(j) = \rho_i] \ (j \ne t_i),
      \qquad y_{i t_i} = v_i

Rows are processed in chunks so that every temporary is bounded by ``_CHUNK_BYTES`` (twice that,
plus a boolean chunk, when column categories are given) whatever N×C is;
:func:`write_row_softmax` uses the output itself as its scratch when ``out`` has the
accumulation dtype, so a forward plus backward allocates exactly one N×C buffer (the gradient).
Nothing is clamped: an overflow of the output dtype is ``inf``, as in torch's own kernels, so a
``GradScaler`` sees it and backs off.
Plain torch ops only: the same code runs on any device (it is the ``impl="torch"`` path on CUDA).
"""

from __future__ import annotations

import torch
from torch import Tensor

from marginkit.ops._dtypes import accumulation_dtype

__all__ = [
    "row_logsumexp_excluding_target",
    "row_statistics_excluding_target",
    "write_row_softmax",
]

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


class _CategoryMask:
    """``[κ(j) = ρ_i]`` for a chunk of rows, written into one reused boolean buffer."""

    def __init__(
        self, column_category: Tensor, row_category: Tensor, chunk_rows: int, acc_dtype
    ) -> None:
        self.column_category = column_category.reshape(1, -1)
        self.row_category = row_category.reshape(-1, 1).to(column_category.dtype)
        n_cols = self.column_category.shape[1]
        device = column_category.device
        self.mask = torch.empty(chunk_rows, n_cols, dtype=torch.bool, device=device)
        self.values = torch.empty(chunk_rows, n_cols, dtype=acc_dtype, device=device)

    def masked(self, chunk: Tensor, begin: int, row_value: Tensor | None = None) -> Tensor:
        """``chunk · mask`` (or ``row_value_i · mask`` when given) in the reused value buffer."""
        n = chunk.shape[0]
        mask = self.mask[:n]
        torch.eq(self.column_category, self.row_category[begin : begin + n], out=mask)
        other = chunk if row_value is None else row_value[begin : begin + n, None]
        return torch.mul(other, mask, out=self.values[:n])


def row_logsumexp_excluding_target(logits: Tensor, target_col: Tensor, scale: float) -> Tensor:
    r"""Row log-sum-exp of the scaled logits, leaving out each row's target column.

    .. math::
        \mathrm{lse}_i = \log \sum_{j \ne t_i} \exp(s \cdot x_{ij})

    :func:`row_statistics_excluding_target` without the row sum.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0, 1.0, 0.0]])
        >>> lse = row_logsumexp_excluding_target(x, torch.tensor([1]), 1.0)
        >>> torch.allclose(lse, torch.tensor([2.0]).log())
        True
    """
    return row_statistics_excluding_target(logits, target_col, scale)[0]


def row_statistics_excluding_target(
    logits: Tensor,
    target_col: Tensor,
    scale: float,
    row_sum: bool = False,
    column_category: Tensor | None = None,
    row_category: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    r"""Row log-sum-exp of the scaled logits and row sum, leaving out each row's target column.

    .. math::
        R_i = \log \sum_{j \ne t_i} \exp(s \cdot x_{ij}), \qquad
        S_i = \sum_{j \ne t_i,\ \kappa(j) = \rho_i} x_{ij}

    Per chunk of rows: ``z = s·x`` in the accumulation dtype, ``z[i, t_i] = -inf``, the max ``M``
    of each row, ``log Σ exp(z − M) + M``; with ``row_sum`` the chunk is first copied with the
    target entries set to 0 and summed (through the category mask when categories are given). A
    ``t_i`` outside ``[0, C)`` excludes nothing; a row whose every column is excluded gets
    ``R = -inf`` (and ``S = 0``).

    Interface, arguments and result: :meth:`marginkit.ops._kernels.CosineKernels.row_statistics_excluding_target`.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.5, 1.0, 0.25]])
        >>> lse, total = row_statistics_excluding_target(x, torch.tensor([1]), 1.0, True)
        >>> total.tolist()
        [0.75]
    """
    n_rows, n_cols = logits.shape
    acc_dtype = accumulation_dtype(logits.dtype)
    lse = torch.empty(n_rows, dtype=acc_dtype, device=logits.device)
    total = torch.zeros(n_rows, dtype=acc_dtype, device=logits.device) if row_sum else None
    if n_rows == 0:
        return lse, total
    if n_cols == 0:
        return lse.fill_(float("-inf")), total
    chunk_rows = min(n_rows, _rows_per_chunk(n_cols, acc_dtype))
    scratch = torch.empty(chunk_rows, n_cols, dtype=acc_dtype, device=logits.device)
    targets = _ChunkTargets(target_col, n_rows, n_cols, chunk_rows)
    categories = None
    if row_sum and column_category is not None:
        categories = _CategoryMask(column_category, row_category, chunk_rows, acc_dtype)
    for begin in range(0, n_rows, chunk_rows):
        end = min(begin + chunk_rows, n_rows)
        scaled = scratch[: end - begin]
        if row_sum:
            scaled.copy_(logits[begin:end])
            targets.fill(scaled, begin, 0.0)
            summed = scaled if categories is None else categories.masked(scaled, begin)
            torch.sum(summed, dim=1, out=total[begin:end])
            scaled.mul_(scale)
        elif logits.dtype == acc_dtype:
            torch.mul(logits[begin:end], scale, out=scaled)
        else:
            scaled.copy_(logits[begin:end]).mul_(scale)
        targets.fill(scaled, begin, float("-inf"))
        row_max = scaled.amax(dim=1)
        # A row with nothing left has max -inf: shift by 0 so that exp(-inf - 0) = 0, log 0 = -inf.
        shift = torch.where(row_max == float("-inf"), torch.zeros_like(row_max), row_max)
        scaled.sub_(shift[:, None]).exp_()
        torch.add(shift, scaled.sum(dim=1).log_(), out=lse[begin:end])
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
) -> Tensor:
    r"""Write the row-scaled softmax of the scaled logits, with a given value in the target column.

    .. math::
        y_{ij} = c_i \exp(s \cdot x_{ij} - \mathrm{lse}_i) + a_i [\kappa(j) = \rho_i]
        \quad (j \ne t_i), \qquad
        y_{i t_i} = v_i \quad (0 \le t_i < C)

    (the :math:`a_i` term only with ``row_add``; without categories it is added to every
    non-target column). The maths runs in float32 (float64 for float64 ``logits``); the result
    is rounded to ``out.dtype`` with no clamp, so an overflow of that dtype gives ``inf`` like
    torch's own kernels. When ``out`` has the accumulation dtype it is its own scratch; otherwise
    one bounded chunk buffer is used.

    Interface, arguments and result: :meth:`marginkit.ops._kernels.CosineKernels.write_row_softmax`.

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
    neg_lse = lse.to(acc_dtype).neg()[:, None]
    row_coef = row_coef.to(acc_dtype)[:, None]
    target_value = target_value.to(acc_dtype)
    if row_add is not None:
        row_add = row_add.to(acc_dtype)
    chunk_rows = min(n_rows, _rows_per_chunk(n_cols, acc_dtype))
    in_place = out.dtype == acc_dtype
    scratch = (
        None if in_place else torch.empty(chunk_rows, n_cols, dtype=acc_dtype, device=logits.device)
    )
    targets = _ChunkTargets(target_col, n_rows, n_cols, chunk_rows)
    categories = None
    if row_add is not None and column_category is not None:
        categories = _CategoryMask(column_category, row_category, chunk_rows, acc_dtype)
    for begin in range(0, n_rows, chunk_rows):
        end = min(begin + chunk_rows, n_rows)
        values = out[begin:end] if scratch is None else scratch[: end - begin]
        # s·x − lse in one pass (x is promoted to the accumulation dtype on the fly).
        torch.add(neg_lse[begin:end], logits[begin:end], alpha=scale, out=values)
        values.exp_().mul_(row_coef[begin:end])
        if row_add is not None:
            if categories is None:
                values.add_(row_add[begin:end, None])
            else:
                values.add_(categories.masked(values, begin, row_add))
        targets.fill(values, begin, target_value)
        if scratch is not None:
            out[begin:end].copy_(values)
    return out
