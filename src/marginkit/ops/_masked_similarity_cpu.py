r"""Chunked-torch kernels of :func:`marginkit.ops.masked_similarity_reductions`.

The twins of :mod:`marginkit.ops._masked_similarity_triton` (same signatures, same results). For
a chunk of rows of the embeddings :math:`x` (B, D) against every reference :math:`y` (R, D):

1. :math:`g = x y^\top` (chunk × R), the value :math:`v = T(g)` (the cosine, the squared or
   plain Euclidean distance of unit vectors, :func:`similarity_value`);
2. per mask :math:`M \in \{P, N\}` (the positives and negatives of each row, from labels or
   given as pair counts), the row log-sum-exp of the exponent :math:`\varphi_M(v)`, the row
   sum of :math:`v` and the row count;
3. backward: the chunk's :math:`\partial\mathcal L / \partial g` recomputed from the saved
   B-vectors, then ``grad_x[chunk] = G y`` and ``grad_y += Gᵀ x[chunk]``.

Every temporary is one chunk of rows × R, bounded by ``_CHUNK_BYTES`` per buffer whatever R is
(a memory bank of 65,536 costs a few chunks, not B × R). Plain torch ops only: the same code
runs on any device (it is the ``impl="torch"`` path on CUDA).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from marginkit.ops._dtypes import accumulation_dtype

__all__ = ["row_gradients", "row_reductions", "similarity_value"]

# Upper bound of one (rows × R) scratch buffer in the accumulation dtype; about 8 of them live
# at once in the backward.
_CHUNK_BYTES = 2 * 1024 * 1024
# Squared distances at or below this have distance 0 and derivative 0 (coinciding unit vectors).
SQUARED_DISTANCE_FLOOR = 1e-12


def rows_per_chunk(n_refs: int, acc_dtype: torch.dtype, chunk_bytes: int = _CHUNK_BYTES) -> int:
    """Rows of one chunk so that a (rows, R) buffer stays within ``chunk_bytes``."""
    element_size = torch.finfo(acc_dtype).bits // 8
    return max(1, chunk_bytes // max(1, n_refs * element_size))


def similarity_value(dots: Tensor, distance: str) -> tuple[Tensor, Tensor]:
    r"""``(v, dv/dg)`` of dot products :math:`g` of unit vectors for ``distance``.

    ``"cosine"``: :math:`v = g`; ``"squared_euclidean"``: :math:`v = \max(2 - 2g, 0)`;
    ``"euclidean"``: :math:`v = \sqrt{\max(2 - 2g, 0)}`, 0 with derivative 0 at or below
    :math:`10^{-12}` squared (coinciding vectors: no infinite gradient).

    Example:
        >>> v, slope = similarity_value(torch.tensor([0.5]), "squared_euclidean")
        >>> v.item(), slope.item()
        (1.0, -2.0)
    """
    if distance == "cosine":
        return dots, torch.ones_like(dots)
    unclamped = 2.0 - 2.0 * dots
    squared = torch.clamp_min(unclamped, 0.0)
    if distance == "squared_euclidean":  # torch's clamp_min derivative: 1 down to the bound
        return squared, torch.where(unclamped >= 0.0, -2.0, 0.0).to(dots.dtype)
    above = squared > SQUARED_DISTANCE_FLOOR
    root = torch.where(above, squared.clamp_min(SQUARED_DISTANCE_FLOOR).sqrt(), 0.0)
    return root, torch.where(above, -1.0 / root.clamp_min(math.sqrt(SQUARED_DISTANCE_FLOOR)), 0.0)


def _exponent(value: Tensor, term: list[float]) -> tuple[Tensor, Tensor]:
    r"""``(φ(v), φ'(v))`` of :math:`\varphi(v) = a\, w(v)\, (v - d)` with ``term = [a, d, c, σ]``.

    :math:`w = 1` for :math:`\sigma = 0`, else :math:`\mathrm{relu}(\sigma (v - c))`, held
    constant in the derivative (Circle loss's detached weight): :math:`\varphi' = a\, w`.
    """
    scale, shift, threshold, direction = term
    if direction == 0.0:
        return scale * (value - shift), torch.full_like(value, scale)
    weight = torch.relu(direction * (value - threshold)) * scale
    return weight * (value - shift), weight


class _Masks:
    """The (chunk, R) pair counts of the positives and negatives of a chunk of rows.

    From labels: positives have the row's label, negatives another one; column
    ``(row + self_offset) mod R`` (the row's own item when the references contain the batch:
    the batch itself, or a FIFO queue it was just written into) is neither. Given counts (``pos_count`` / ``neg_count``, (B, R), bool or integer) are used as is.
    """

    def __init__(self, labels, ref_labels, pos_count, neg_count, self_offset, n_refs) -> None:
        self.labels, self.ref_labels = labels, ref_labels
        self.pos_count, self.neg_count = pos_count, neg_count
        self.self_offset, self.n_refs = self_offset, n_refs

    def chunk(self, begin: int, end: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if self.pos_count is not None:
            return self.pos_count[begin:end].to(dtype), self.neg_count[begin:end].to(dtype)
        same = self.labels[begin:end, None] == self.ref_labels[None, :]
        negative = (~same).to(dtype)
        if self.self_offset >= 0:
            rows = torch.arange(begin, end, device=same.device)
            same[rows - begin, (rows + self.self_offset) % self.n_refs] = False
        return same.to(dtype), negative


def _masked_logsumexp(exponent: Tensor, count: Tensor) -> Tensor:
    """Row ``log Σ count · exp(φ)`` over the entries with ``count > 0`` (−inf for none)."""
    shifted = torch.where(count > 0, exponent + count.log(), float("-inf"))
    return torch.logsumexp(shifted, dim=1)


def _is_linear(term: list[float]) -> bool:
    return term[3] == 0.0 and term[0] != 0.0


class _LabelChunk:
    """The label masks of a chunk as one boolean ``same`` matrix (fewer passes than two masks).

    Negatives are ``~same`` (never materialised: ``torch.where`` takes its branches swapped);
    positives are ``same`` with the own column of each row cleared.
    """

    def __init__(self, labels, ref_labels, self_offset, begin, end) -> None:
        n_refs = len(ref_labels)
        self.negatives_of = labels[begin:end, None] == ref_labels[None, :]
        self.positives = self.negatives_of.clone()
        if self_offset >= 0:
            rows = torch.arange(begin, end, device=labels.device)
            self.positives[rows - begin, (rows + self_offset) % n_refs] = False

    def where(self, index: int, inside: Tensor | float, outside: Tensor | float) -> Tensor:
        """``inside`` on the entries of mask ``index`` (0: positives, 1: negatives), else ``outside``."""
        if index == 0:
            return torch.where(self.positives, inside, outside)
        return torch.where(self.negatives_of, outside, inside)

    def count(self, index: int) -> Tensor:
        if index == 0:
            return self.positives.sum(1)
        return self.negatives_of.shape[1] - self.negatives_of.sum(1)


def _linear_logsumexp(value: Tensor, chunk: _LabelChunk, index: int, term: list[float]) -> Tensor:
    """``log Σ_M e^{a (v − d)}`` in five passes: mask, row max, shift·scale, exp, sum."""
    scale, shift = term[0], term[1]
    fill = float("-inf") if scale > 0 else float("inf")
    masked = chunk.where(index, value, fill)
    top = masked.amax(1) if scale > 0 else masked.amin(1)
    top = torch.where(torch.isinf(top), 0.0, top)
    total = masked.sub_(top[:, None]).mul_(scale).exp_().sum(1)
    return total.log() + scale * (top - shift)


def _general_logsumexp(value: Tensor, chunk: _LabelChunk, index: int, term: list[float]) -> Tensor:
    """``log Σ_M e^{φ(v)}`` of any exponent on label masks (no pair counts to take logs of)."""
    exponent, _ = _exponent(value, term)
    return torch.logsumexp(chunk.where(index, exponent, float("-inf")), dim=1)


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
) -> list[Tensor]:
    """``[lse_pos, lse_neg, sum_pos, sum_neg, n_pos, n_neg]``, (B,) each, accumulation dtype."""
    acc_dtype = accumulation_dtype(embeddings.dtype)
    batch, n_refs = embeddings.shape[0], references.shape[0]
    refs = references.to(acc_dtype)
    masks = _Masks(labels, ref_labels, pos_count, neg_count, self_offset, n_refs)
    outputs = [embeddings.new_empty(batch, dtype=acc_dtype) for _ in range(6)]
    step = rows_per_chunk(n_refs, acc_dtype)
    by_labels = pos_count is None
    for begin in range(0, batch, step):
        end = min(begin + step, batch)
        value, _slope = similarity_value(embeddings[begin:end].to(acc_dtype) @ refs.T, distance)
        if by_labels:
            chunk = _LabelChunk(labels, ref_labels, self_offset, begin, end)
            for index, term in enumerate((pos_term, neg_term)):
                reduce = _linear_logsumexp if _is_linear(term) else _general_logsumexp
                outputs[index][begin:end] = reduce(value, chunk, index, term)
                outputs[2 + index][begin:end] = chunk.where(index, value, 0.0).sum(1)
                outputs[4 + index][begin:end] = chunk.count(index)
            continue
        for index, (count, term) in enumerate(
            zip(masks.chunk(begin, end, acc_dtype), (pos_term, neg_term), strict=True)
        ):
            exponent, _ = _exponent(value, term)
            outputs[index][begin:end] = _masked_logsumexp(exponent, count)
            outputs[2 + index][begin:end] = (value * count).sum(1)
            outputs[4 + index][begin:end] = count.sum(1)
    return outputs


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
) -> tuple[Tensor, Tensor]:
    r"""``(grad_embeddings, grad_references)`` from the B-vector gradients, chunks recomputed.

    ``references_grad=False``: the references' gradient is not computed ((0, D) returned).

    ``grads = [g_lse_pos, g_lse_neg, g_sum_pos, g_sum_neg]`` and ``lse = [lse_pos, lse_neg]``;
    per entry of mask :math:`M`:
    :math:`\partial\mathcal L/\partial v = c\,(g^{L}_i\, e^{\varphi(v) - L_i}\, \varphi'(v)
    + g^{S}_i)`, then times :math:`dv/dg`.
    """
    acc_dtype = accumulation_dtype(embeddings.dtype)
    batch, n_refs = embeddings.shape[0], references.shape[0]
    refs = references.to(acc_dtype)
    masks = _Masks(labels, ref_labels, pos_count, neg_count, self_offset, n_refs)
    grad_embeddings = torch.empty(embeddings.shape, dtype=acc_dtype, device=embeddings.device)
    ref_rows = references.shape[0] if references_grad else 0
    grad_references = torch.zeros(
        ref_rows, references.shape[1], dtype=acc_dtype, device=references.device
    )
    step = rows_per_chunk(n_refs, acc_dtype)
    by_labels = pos_count is None
    # Which B-vector gradients are non-zero (a loss of log-sum-exps only has zero sum grads).
    used = [bool(grad.any()) for grad in grads]
    for begin in range(0, batch, step):
        end = min(begin + step, batch)
        rows = embeddings[begin:end].to(acc_dtype)
        value, slope = similarity_value(rows @ refs.T, distance)
        if by_labels:
            grad_value = _label_grad_value(
                value, _LabelChunk(labels, ref_labels, self_offset, begin, end),
                grads, used, lse, (pos_term, neg_term), begin, end,
            )  # fmt: skip
            grad_value *= slope
            grad_embeddings[begin:end] = grad_value @ refs
            if references_grad:
                grad_references += grad_value.T @ rows
            continue
        grad_value = torch.zeros_like(value)
        for index, (count, term) in enumerate(
            zip(masks.chunk(begin, end, acc_dtype), (pos_term, neg_term), strict=True)
        ):
            exponent, derivative = _exponent(value, term)
            row_lse = lse[index][begin:end, None]
            softmax = torch.where(count > 0, torch.exp(exponent - row_lse), 0.0) * count
            grad_value += softmax * derivative * grads[index][begin:end, None]
            grad_value += count * grads[2 + index][begin:end, None]
        grad_value *= slope
        grad_embeddings[begin:end] = grad_value @ refs
        if references_grad:
            grad_references += grad_value.T @ rows
    return grad_embeddings, grad_references


def _label_grad_value(value, chunk, grads, used, lse, terms, begin, end) -> Tensor:
    r""":math:`\partial\mathcal L/\partial v` of a chunk on label masks: per mask,
    :math:`[M]\,(g^L e^{\varphi(v) - L} \varphi'(v) + g^S)`, skipping zero gradients."""
    grad_value = torch.zeros_like(value)
    for index, term in enumerate(terms):
        g_lse, g_sum = grads[index][begin:end, None], grads[2 + index][begin:end, None]
        if not (used[index] or used[2 + index]):
            continue
        if used[index]:
            row_lse = lse[index][begin:end]
            finite_lse = torch.where(torch.isinf(row_lse), 0.0, row_lse)[:, None]
            if _is_linear(term):
                scale, shift = term[0], term[1]
                part = value * scale
                part.sub_(finite_lse + scale * shift).exp_().mul_(g_lse * scale)
            else:
                exponent, derivative = _exponent(value, term)
                part = exponent.sub_(finite_lse).exp_().mul_(derivative).mul_(g_lse)
            if used[2 + index]:
                part.add_(g_sum)
        else:
            part = g_sum.expand_as(value)
        grad_value += chunk.where(index, part, 0.0)
    return grad_value
