"""Triplet miners: (anchor, positive, negative) index triplets from a batch, under ``no_grad``.

A miner is called on a batch, ``miner(features, labels) -> (anchors, positives, negatives)``,
three int64 tensors of batch indices with ``labels[a] == labels[p]``, ``a != p`` and
``labels[n] != labels[a]`` (pytorch-metric-learning's / OML's convention). Distances are
Euclidean (:func:`~marginkit.miners._inputs.pairwise_distances`); equal distances are broken by
the lower batch index. Losses pass their own distance matrix to :meth:`TripletMiner.mine` so it
is computed once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from marginkit._validation import check_positive_int
from marginkit.miners._inputs import check_features_and_labels, pair_masks, pairwise_distances

Triplets = tuple[Tensor, Tensor, Tensor]


def count_triplets(labels: Tensor) -> Tensor:
    """Valid triplets per anchor, ``n_pos(a) · n_neg(a)``, as a (B,) int64 tensor.

    Example:
        >>> count_triplets(torch.tensor([0, 0, 1, 2])).tolist()
        [2, 2, 0, 0]
    """
    positive, negative = pair_masks(labels)
    return positive.sum(1) * negative.sum(1)


class TripletMiner:
    """Base class: ``miner(features, labels)`` validates the batch and calls :meth:`mine`."""

    def __call__(self, features: Tensor, labels: Tensor) -> Triplets:
        labels = check_features_and_labels(features, labels)
        with torch.no_grad():
            return self.mine(pairwise_distances(features.detach()), labels)

    def mine(self, distances: Tensor, labels: Tensor) -> Triplets:
        """Return the triplets of a batch from its (B, B) ``distances`` and (B,) ``labels``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in vars(self).items())
        return f"{type(self).__name__}({args})"


class AllTripletsMiner(TripletMiner):
    """Every valid triplet of the batch: ``Σ_a n_pos(a)·n_neg(a)`` of them.

    Ordered by anchor, then positive index, then negative index. With ``max_triplets`` and more
    valid triplets than that, a uniformly random subset of ``max_triplets`` distinct triplets is
    returned instead (drawn from torch's global generator; seed it, e.g. with Lightning's
    ``seed_everything``, for reproducible runs). Indices are decoded from triplet numbers, so
    memory is O(B² + returned triplets), never a B×B×B mask.

    :class:`~marginkit.losses.TripletLossWithMiner` recognises this miner and, when every
    triplet is wanted, reduces the loss over all of them without materialising any.

    Args:
        max_triplets: cap on the number of returned triplets, or ``None`` for all of them.

    Example:
        >>> anchors, positives, negatives = AllTripletsMiner()(
        ...     torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]))
        >>> torch.stack([anchors, positives, negatives]).T.tolist()[:3]
        [[0, 1, 2], [0, 1, 3], [1, 0, 2]]
        >>> len(anchors)
        8
    """

    def __init__(self, max_triplets: int | None = None) -> None:
        if max_triplets is not None:
            check_positive_int("max_triplets", max_triplets)
        self.max_triplets = max_triplets

    def mine(self, distances: Tensor, labels: Tensor) -> Triplets:
        per_anchor = count_triplets(labels)
        total = int(per_anchor.sum())
        device = labels.device
        if self.max_triplets is None or total <= self.max_triplets:
            numbers = torch.arange(total, device=device)
        else:
            numbers = _sample_without_replacement(total, self.max_triplets, device)
        return _decode_triplets(numbers, labels, per_anchor)


def _sample_without_replacement(total: int, count: int, device: torch.device) -> Tensor:
    """``count`` distinct random integers in ``[0, total)`` in random order; O(count) memory
    unless ``count`` is a large fraction of ``total``."""
    if 4 * count >= total:
        return torch.randperm(total, device=device)[:count]
    drawn = torch.empty(0, dtype=torch.long, device=device)
    while len(drawn) < count:
        extra = torch.randint(total, (2 * count,), device=device)
        drawn = torch.unique(torch.cat([drawn, extra]))
    return drawn[torch.randperm(len(drawn), device=device)[:count]]


def _decode_triplets(numbers: Tensor, labels: Tensor, per_anchor: Tensor) -> Triplets:
    """Map triplet numbers (in anchor, positive, negative order) to batch indices."""
    positive, negative = pair_masks(labels)
    n_neg = negative.sum(1)
    pos_columns = positive.nonzero()[:, 1]  # row-major: grouped by anchor, ascending
    neg_columns = negative.nonzero()[:, 1]
    pos_start = torch.cumsum(positive.sum(1), 0) - positive.sum(1)
    neg_start = torch.cumsum(n_neg, 0) - n_neg
    ends = torch.cumsum(per_anchor, 0)
    anchors = torch.searchsorted(ends, numbers, right=True)
    within = numbers - (ends - per_anchor)[anchors]
    anchor_neg = n_neg[anchors]
    positives = pos_columns[pos_start[anchors] + within // anchor_neg]
    negatives = neg_columns[neg_start[anchors] + within % anchor_neg]
    return anchors, positives, negatives


class NHardTripletsMiner(TripletMiner):
    """For each anchor, its ``n_positive`` farthest positives × ``n_negative`` nearest negatives.

    An anchor with fewer positives (negatives) uses all it has; anchors without a positive or
    a negative give no triplet. Equal distances are ranked by the lower batch index. Triplets
    are ordered by anchor, then positive rank, then negative rank. ``NHardTripletsMiner(1, 1)``
    is :class:`HardTripletsMiner` (batch-hard, Hermans et al. 2017).

    OML's ranges: ``n_positive=(lo, hi)`` takes the positives of hardness ranks ``lo`` to
    ``hi − 1`` (0 is the hardest; a Python slice, so ``(0, n)`` is ``n``), and the same for
    ``n_negative``; an anchor with fewer than ``lo + 1`` positives gets none from the range.

    Args:
        n_positive: hardest positives per anchor (≥ 1), or a ``(lo, hi)`` range of ranks.
        n_negative: hardest negatives per anchor (≥ 1), or a ``(lo, hi)`` range of ranks.

    Example:
        >>> features = torch.tensor([[0.0], [1.0], [3.0], [2.5], [9.0]])
        >>> miner = NHardTripletsMiner(n_positive=1, n_negative=2)
        >>> [t.tolist() for t in miner(features, torch.tensor([0, 0, 0, 1, 1]))][0]
        [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
        >>> ranged = NHardTripletsMiner(n_positive=(1, 2), n_negative=(0, 1))  # 2nd-hardest positive
        >>> [t.tolist() for t in ranged(features, torch.tensor([0, 0, 0, 1, 1]))]
        [[0, 1, 2], [1, 0, 1], [3, 3, 3]]
    """

    def __init__(
        self, n_positive: int | tuple[int, int] = 1, n_negative: int | tuple[int, int] = 1
    ) -> None:
        self.n_positive = _check_ranks("n_positive", n_positive)
        self.n_negative = _check_ranks("n_negative", n_negative)

    def mine(self, distances: Tensor, labels: Tensor) -> Triplets:
        positive, negative = pair_masks(labels)
        batch = len(labels)
        pos_low, pos_high = _rank_range(self.n_positive, batch)
        neg_low, neg_high = _rank_range(self.n_negative, batch)
        far_first = distances.masked_fill(~positive, float("-inf"))
        pos_idx = far_first.sort(dim=1, descending=True, stable=True).indices[:, pos_low:pos_high]
        near_first = distances.masked_fill(~negative, float("inf"))
        neg_idx = near_first.sort(dim=1, stable=True).indices[:, neg_low:neg_high]
        slots = torch.arange(batch, device=labels.device)
        pos_ok = slots[pos_low:pos_high] < positive.sum(1, keepdim=True)
        neg_ok = slots[neg_low:neg_high] < negative.sum(1, keepdim=True)
        anchors, pos_slot, neg_slot = (pos_ok[:, :, None] & neg_ok[:, None, :]).nonzero().unbind(1)
        return anchors, pos_idx[anchors, pos_slot], neg_idx[anchors, neg_slot]


def _check_ranks(name: str, value: object) -> int | tuple[int, int]:
    """A positive int, or OML's ``(lo, hi)`` range of ranks with ``0 <= lo < hi``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise TypeError(f"`{name}` must be an int or a (lo, hi) pair of ints, got {value!r}")
        low, high = value
        if not 0 <= low < high:
            raise ValueError(f"`{name}` range must have 0 <= lo < hi, got {tuple(value)}")
        return (low, high)
    return check_positive_int(name, value)


def _rank_range(ranks: int | tuple[int, int], batch: int) -> tuple[int, int]:
    low, high = (0, ranks) if isinstance(ranks, int) else ranks
    return min(low, batch), min(high, batch)


class HardTripletsMiner(TripletMiner):
    """Batch-hard mining: per anchor, its farthest positive and its nearest negative.

    One triplet per anchor that has at least one positive and one negative (Hermans, Beyer &
    Leibe 2017, "In Defense of the Triplet Loss for Person Re-Identification"); equal distances
    go to the lower batch index.

    Example:
        >>> features = torch.tensor([[0.0], [1.0], [3.0], [2.5], [9.0]])
        >>> [t.tolist() for t in HardTripletsMiner()(features, torch.tensor([0, 0, 0, 1, 1]))]
        [[0, 1, 2, 3, 4], [2, 2, 0, 4, 3], [3, 3, 3, 2, 2]]
    """

    def mine(self, distances: Tensor, labels: Tensor) -> Triplets:
        positive, negative = pair_masks(labels)
        hardest_pos = distances.masked_fill(~positive, float("-inf")).argmax(1)
        hardest_neg = distances.masked_fill(~negative, float("inf")).argmin(1)
        anchors = (positive.any(1) & negative.any(1)).nonzero()[:, 0]
        return anchors, hardest_pos[anchors], hardest_neg[anchors]
