r"""What the similarity pair losses share: one call signature, the pairs of a batch, the reducers.

Every loss of this family (MultiSimilarity, Circle, SupCon, NT-Xent, the lifted structure
losses, N-pairs, FastAP) is called as pytorch-metric-learning's losses are::

    loss(embeddings, labels, *, indices_tuple=None, ref_embeddings=None, ref_labels=None)

* the embeddings are L2-normalised (PML's distances normalise by default), and so are the
  references (``ref_embeddings``, default: the batch itself);
* without ``indices_tuple`` the pairs are every (row, reference) pair: positives share the
  label (a row and itself excluded when the references are the batch), negatives do not;
* ``indices_tuple`` is a miner's ``(anchors, positives, negatives)`` (as pairs
  ``(a, p)`` and ``(a, n)``) or ``(a1, p, a2, n)``: those pairs only (PML's
  ``convert_to_pairs``).

The row reductions go through :func:`marginkit.ops.masked_similarity_reductions` (no B×R
matrix); a loss of positive *pairs* (NT-Xent, lifted structure) lists its positive pairs
(:math:`\sum_i |P_i|` of them: B(K − 1) in a P×K batch) and computes their values directly.

Reducers (PML's): ``"mean"`` (``MeanReducer``), ``"avg_nonzero"`` (``AvgNonZeroReducer``: the
mean of the losses > 0), ``"sum"`` and ``"none"`` (the unreduced losses). An empty set of
losses reduces to a zero that keeps the graph (PML's ``zero_losses``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marginkit._validation import check_option
from marginkit.miners._inputs import check_features_and_labels, check_finite_tensor, safe_sqrt
from marginkit.ops.masked_similarity import (
    DISTANCES,
    Exponent,
    MaskedRowReductions,
    masked_similarity_reductions,
)

REDUCERS = ("mean", "avg_nonzero", "sum", "none")


def reduce_losses(losses: Tensor, reducer: str, anchor: Tensor) -> Tensor:
    """Reduce per-element losses with one of :data:`REDUCERS`; ``anchor`` keeps an empty graph.

    Example:
        >>> reduce_losses(torch.tensor([0.0, 1.0, 3.0]), "avg_nonzero", torch.zeros(1)).item()
        2.0
    """
    if reducer == "none":
        return losses
    if reducer == "avg_nonzero":
        losses = losses[losses > 0]
    if losses.numel() == 0:
        return anchor.sum() * 0.0
    return losses.sum() if reducer == "sum" else losses.mean()


def lse_or_zero(lse: Tensor) -> Tensor:
    """A log-sum-exp over an empty set (−inf) as 0: PML's ``logsumexp(..., add_one=False)``."""
    return torch.where(torch.isinf(lse) & (lse < 0), torch.zeros_like(lse), lse)


def log_add_exp(first: Tensor, second: Tensor) -> Tensor:
    """``logaddexp`` that is −inf with gradient 0 (not NaN) where both sets are empty (−inf).

    Example:
        >>> log_add_exp(torch.tensor([0.0, -torch.inf]), torch.tensor([0.0, -torch.inf]))
        tensor([0.6931,   -inf])
    """
    empty = torch.isneginf(first) & torch.isneginf(second)
    combined = torch.logaddexp(first.masked_fill(empty, 0.0), second.masked_fill(empty, 0.0))
    return combined.masked_fill(empty, float("-inf"))


def check_reducer(reducer: object, default: str) -> str:
    """``reducer`` (``None``: the loss's PML default) checked against :data:`REDUCERS`."""
    if reducer is None:
        return default
    check_option("reducer", reducer, REDUCERS)
    return reducer


def check_distance(distance: object, allowed: tuple[str, ...] = DISTANCES) -> str:
    check_option("distance", distance, allowed)
    return distance


@dataclass
class PairBatch:
    """A validated batch: unit embeddings and references, their labels and the pair masks.

    ``pos_count`` / ``neg_count`` are (B, R) pair counts when an ``indices_tuple`` was given
    (``None``: the label masks, with ``self_offset`` when the references hold the batch);
    ``pairs`` is then ``(a1, p, a2, n)``.
    """

    embeddings: Tensor
    references: Tensor
    labels: Tensor
    ref_labels: Tensor
    distance: str
    self_offset: int | None = None
    pos_count: Tensor | None = None
    neg_count: Tensor | None = None
    pairs: tuple[Tensor, Tensor, Tensor, Tensor] | None = None

    @property
    def is_similarity(self) -> bool:
        """Larger is closer (cosine), PML's ``distance.is_inverted``."""
        return self.distance == "cosine"

    def reductions(self, pos_exponent: Exponent, neg_exponent: Exponent) -> MaskedRowReductions:
        """The op's B-vectors for this batch's masks (see :mod:`marginkit.ops.masked_similarity`)."""
        if self.pos_count is not None:
            return masked_similarity_reductions(
                self.embeddings,
                self.references,
                pos_count=self.pos_count,
                neg_count=self.neg_count,
                distance=self.distance,
                pos_exponent=pos_exponent,
                neg_exponent=neg_exponent,
            )
        return masked_similarity_reductions(
            self.embeddings,
            self.references,
            self.labels,
            self.ref_labels,
            self_offset=self.self_offset,
            distance=self.distance,
            pos_exponent=pos_exponent,
            neg_exponent=neg_exponent,
        )

    def positive_pairs(self) -> tuple[Tensor, Tensor]:
        """Every positive ``(row, reference)`` pair, by row then reference (PML's order).

        From an ``indices_tuple``: its ``(a1, p)`` as given (repeats kept). From labels: listed
        through the sorted reference labels, O(number of pairs) memory.
        """
        if self.pairs is not None:
            return self.pairs[0], self.pairs[1]
        order = torch.argsort(self.ref_labels, stable=True)
        sorted_labels = self.ref_labels[order]
        low = torch.searchsorted(sorted_labels, self.labels, right=False)
        high = torch.searchsorted(sorted_labels, self.labels, right=True)
        counts = high - low
        rows = torch.repeat_interleave(torch.arange(len(self.labels), device=counts.device), counts)
        starts = torch.cumsum(counts, 0) - counts
        within = torch.arange(len(rows), device=counts.device) - starts[rows]
        columns = order[low[rows] + within]
        if self.self_offset is not None:
            own = (rows + self.self_offset) % len(self.ref_labels)
            keep = columns != own
            rows, columns = rows[keep], columns[keep]
        return rows, columns

    def pair_values(self, rows: Tensor, columns: Tensor) -> Tensor:
        """:math:`v` of the listed pairs (cosine or distance of the unit vectors), differentiable."""
        dots = (self.embeddings[rows] * self.references[columns]).sum(1)
        if self.distance == "cosine":
            return dots
        squared = torch.clamp_min(2.0 - 2.0 * dots, 0.0)
        return squared if self.distance == "squared_euclidean" else safe_sqrt(squared)


def _check_indices(indices_tuple: object, batch: int, n_refs: int) -> tuple[Tensor, ...]:
    if not isinstance(indices_tuple, (tuple, list)) or len(indices_tuple) not in (3, 4):
        got = len(indices_tuple) if isinstance(indices_tuple, (tuple, list)) else None
        raise ValueError(
            "`indices_tuple` must be a miner's (anchors, positives, negatives) or "
            f"(a1, p, a2, n), got {type(indices_tuple).__name__} of length {got}"
        )
    parts = []
    for position, part in enumerate(indices_tuple):
        if not isinstance(part, Tensor) or part.ndim != 1 or part.is_floating_point():
            raise ValueError(
                f"`indices_tuple[{position}]` must be a 1-D integer tensor, got "
                f"{type(part).__name__} {getattr(part, 'shape', '')}"
            )
        parts.append(part.long())
    if len(parts) == 3:
        anchors, positives, negatives = parts
        parts = [anchors, positives, anchors, negatives]
        if not len(anchors) == len(positives) == len(negatives):
            raise ValueError(
                "`indices_tuple` (anchors, positives, negatives) must have equal lengths, got "
                f"{[len(part) for part in indices_tuple]}"
            )
    for first, second in ((0, 1), (2, 3)):
        if len(parts[first]) != len(parts[second]):
            raise ValueError(
                f"`indices_tuple` pairs must have equal lengths, got {len(parts[first])} and "
                f"{len(parts[second])} at positions {first} and {second}"
            )
    for position, (part, size) in enumerate(
        zip(parts, (batch, n_refs, batch, n_refs), strict=True)
    ):
        if len(part) and (int(part.min()) < 0 or int(part.max()) >= size):
            raise ValueError(
                f"`indices_tuple` pair index {position} must be in [0, {size}), got values in "
                f"[{int(part.min())}, {int(part.max())}]"
            )
    return tuple(parts)


def _pair_counts(rows: Tensor, columns: Tensor, shape: tuple[int, int], repeats: bool) -> Tensor:
    counts = torch.zeros(shape, dtype=torch.int32, device=rows.device)
    ones = torch.ones(len(rows), dtype=torch.int32, device=rows.device)
    counts.index_put_((rows, columns), ones, accumulate=repeats)
    return counts


def pair_batch(
    embeddings: object,
    labels: object,
    indices_tuple: object,
    ref_embeddings: object,
    ref_labels: object,
    distance: str,
    *,
    count_repeats: bool = False,
    self_offset: int | None = None,
) -> PairBatch:
    """Validate a loss's inputs and build its :class:`PairBatch` (see the module docstring).

    ``count_repeats``: a pair listed twice in ``indices_tuple`` counts twice (PML's pair-based
    losses, which use the listed pairs) instead of once (its mask-based ones).
    ``self_offset`` (with ``ref_embeddings``, internal: the cross-batch memory) marks the
    reference ``(i + self_offset) mod R`` as row ``i``'s own item.
    """
    labels = check_features_and_labels(embeddings, labels)
    if (ref_embeddings is None) != (ref_labels is None):
        raise ValueError(
            "`ref_embeddings` and `ref_labels` must be given together, got "
            f"ref_embeddings={'None' if ref_embeddings is None else 'a tensor'}, "
            f"ref_labels={'None' if ref_labels is None else 'a tensor'}"
        )
    dtype = torch.float32 if embeddings.dtype in (torch.float16, torch.bfloat16) else None
    unit = F.normalize(embeddings.to(dtype or embeddings.dtype), dim=1)
    if ref_embeddings is None:
        references, ref_labels, self_offset = unit, labels, 0
    else:
        if not isinstance(ref_embeddings, Tensor):
            raise TypeError(
                f"`ref_embeddings` must be a torch.Tensor, got {type(ref_embeddings).__name__}"
            )
        if ref_embeddings.ndim != 2 or ref_embeddings.shape[1] != embeddings.shape[1]:
            raise ValueError(
                f"`ref_embeddings` must have shape (R, {embeddings.shape[1]}) like `embeddings` "
                f"{tuple(embeddings.shape)}, got {tuple(ref_embeddings.shape)}"
            )
        if not ref_embeddings.is_floating_point() or ref_embeddings.device != embeddings.device:
            raise ValueError(
                f"`ref_embeddings` must be floating point on {embeddings.device}, got "
                f"{ref_embeddings.dtype} on {ref_embeddings.device}"
            )
        check_finite_tensor("ref_embeddings", ref_embeddings)
        if not isinstance(ref_labels, Tensor) or ref_labels.ndim != 1:
            raise ValueError(
                f"`ref_labels` must be a 1-D tensor of shape ({ref_embeddings.shape[0]},), got "
                f"{type(ref_labels).__name__} {tuple(getattr(ref_labels, 'shape', ()))}"
            )
        if ref_labels.shape[0] != ref_embeddings.shape[0] or ref_labels.is_floating_point():
            raise ValueError(
                f"`ref_labels` must be ({ref_embeddings.shape[0]},) integer class ids, got "
                f"{tuple(ref_labels.shape)} {ref_labels.dtype}"
            )
        references = F.normalize(ref_embeddings.to(unit.dtype), dim=1)
        ref_labels = ref_labels.long().to(labels.device)
    batch = PairBatch(unit, references, labels, ref_labels, distance, self_offset)
    if indices_tuple is not None:
        pairs = _check_indices(indices_tuple, len(labels), len(ref_labels))
        shape = (len(labels), len(ref_labels))
        batch.pairs = pairs
        batch.pos_count = _pair_counts(pairs[0], pairs[1], shape, count_repeats)
        batch.neg_count = _pair_counts(pairs[2], pairs[3], shape, count_repeats)
        batch.self_offset = None
    return batch


class PairLoss(nn.Module):
    """Base of the similarity pair losses: PML's call signature, the batch, ``last_logs``.

    Subclasses set :meth:`compute` (per-element losses of a :class:`PairBatch`), and the class
    attributes ``count_repeats`` (pair-based losses) and ``supports_references`` (``False``
    for the losses that take no ``ref_embeddings``).
    """

    requires_balanced_batches = True
    min_instances_per_class = 2
    count_repeats = False
    supports_references = True
    references_note = ""

    def __init__(self, distance: str, reducer: str) -> None:
        super().__init__()
        self.distance = distance
        self.reducer = reducer
        self.last_logs: dict[str, float] = {}

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        *,
        indices_tuple: tuple[Tensor, ...] | None = None,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        """Return the reduced loss of the batch (see the class docstring)."""
        if not self.supports_references and (ref_embeddings is not None or ref_labels is not None):
            raise ValueError(
                f"{type(self).__name__}: `ref_embeddings` / `ref_labels` are not supported"
                f"{self.references_note}"
            )
        return self.loss_of(
            pair_batch(
                embeddings,
                labels,
                indices_tuple,
                ref_embeddings,
                ref_labels,
                self.distance,
                count_repeats=self.count_repeats,
            )
        )

    def loss_of(self, batch: PairBatch) -> Tensor:
        """The reduced loss of a built :class:`PairBatch` (the cross-batch memory's entry)."""
        losses = self.compute(batch)
        return reduce_losses(losses, self.reducer, batch.embeddings)

    def compute(self, batch: PairBatch) -> Tensor:
        raise NotImplementedError

    def log_pairs(self, reductions: MaskedRowReductions, **extra: Tensor | float) -> None:
        """``last_logs``: mean value of the positive / negative pairs, their counts, ``extra``."""
        with torch.no_grad():
            n_pos, n_neg = reductions.n_pos.sum(), reductions.n_neg.sum()
            values = [
                reductions.sum_pos.detach().sum() / n_pos,
                reductions.sum_neg.detach().sum() / n_neg,
                n_pos,
                n_neg,
                *[torch.as_tensor(value, dtype=n_pos.dtype) for value in extra.values()],
            ]
            stats = torch.stack([value.to(n_pos.dtype).reshape(()) for value in values]).tolist()
        names = ("pos_value", "neg_value", "n_pos_pairs", "n_neg_pairs", *extra)
        self.last_logs = dict(zip(names, stats, strict=True))

    def extra_repr(self) -> str:
        return f"distance={self.distance!r}, reducer={self.reducer!r}"
