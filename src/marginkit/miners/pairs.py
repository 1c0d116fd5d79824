"""pytorch-metric-learning's pair and triplet miners, with its names, defaults and distances.

A miner is called as PML's are, ``miner(embeddings, labels, ref_embeddings=None,
ref_labels=None)`` under ``no_grad``, and returns batch indices: pair miners
``(a1, p, a2, n)`` (positive pairs ``(a1[k], p[k])``, negative pairs ``(a2[k], n[k])``, ``p`` and
``n`` indexing the references), triplet miners ``(a, p, n)``. Every pair and triplet loss of
:mod:`marginkit.losses` takes either as ``indices_tuple``. Embeddings are L2-normalised (PML's
distances normalise by default) and compared by ``distance``: ``"cosine"`` (a similarity:
larger is closer) or ``"euclidean"`` / ``"squared_euclidean"``. Without references the batch is
its own reference set and an item is never its own pair. Pairs come in row-major order
(anchor, then reference index).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from marginkit._validation import check_finite_number, check_option
from marginkit.miners._inputs import check_features_and_labels, safe_sqrt
from marginkit.miners.triplets import AllTripletsMiner

DISTANCES = ("cosine", "euclidean", "squared_euclidean")
Pairs = tuple[Tensor, Tensor, Tensor, Tensor]


def similarity_matrix(embeddings: Tensor, references: Tensor, distance: str) -> Tensor:
    """The (B, R) cosines, or Euclidean / squared distances, of the L2-normalised rows.

    Example:
        >>> similarity_matrix(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), "euclidean")
        tensor([[1.4142]])
    """
    dtype = torch.float32 if embeddings.dtype in (torch.float16, torch.bfloat16) else None
    unit = F.normalize(embeddings.to(dtype or embeddings.dtype), dim=1)
    refs = F.normalize(references.to(unit.dtype), dim=1)
    dots = unit @ refs.T
    if distance == "cosine":
        return dots
    squared = torch.clamp_min(2.0 - 2.0 * dots, 0.0)
    return squared if distance == "squared_euclidean" else safe_sqrt(squared)


class PairMiner:
    """Base class: validates the inputs, builds the matrix and the masks, calls :meth:`mine`."""

    default_distance = "euclidean"

    def __init__(self, distance: str | None) -> None:
        distance = self.default_distance if distance is None else distance
        check_option("distance", distance, DISTANCES)
        self.distance = distance

    @property
    def is_similarity(self) -> bool:
        return self.distance == "cosine"

    def __call__(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ):
        labels = check_features_and_labels(embeddings, labels)
        if (ref_embeddings is None) != (ref_labels is None):
            raise ValueError("`ref_embeddings` and `ref_labels` must be given together")
        with torch.no_grad():
            if ref_embeddings is None:
                references, ref_labels = embeddings, labels
            else:
                ref_labels = check_features_and_labels(ref_embeddings, ref_labels)
                if ref_embeddings.shape[1] != embeddings.shape[1]:
                    raise ValueError(
                        f"`ref_embeddings` must have {embeddings.shape[1]} columns like "
                        f"`embeddings`, got {tuple(ref_embeddings.shape)}"
                    )
                references = ref_embeddings
            matrix = similarity_matrix(embeddings.detach(), references.detach(), self.distance)
            same = labels[:, None] == ref_labels[None, :]
            positive = same.clone()
            if ref_embeddings is None:
                positive.fill_diagonal_(False)
            return self.mine(matrix, positive, ~same, labels, ref_labels)

    def mine(self, matrix: Tensor, positive: Tensor, negative: Tensor, labels, ref_labels):
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in vars(self).items())
        return f"{type(self).__name__}({args})"


def _pairs(positive: Tensor, negative: Tensor) -> Pairs:
    a1, p = positive.nonzero().unbind(1)
    a2, n = negative.nonzero().unbind(1)
    return a1, p, a2, n


class MultiSimilarityMiner(PairMiner):
    r"""The informative pairs of the multi-similarity paper (Wang et al., CVPR 2019).

    With similarities :math:`s`: a positive pair is kept when :math:`s_{ip} - \epsilon <
    \max_{n} s_{in}`, a negative pair when :math:`s_{in} + \epsilon > \min_{p} s_{ip}` (with a
    distance, the inequalities are reversed: :math:`d_{ip} + \epsilon > \min_n d_{in}`,
    :math:`d_{in} - \epsilon < \max_p d_{ip}`). PML's default distance is the cosine.

    Args:
        epsilon: :math:`\epsilon`.
        distance: ``"cosine"`` (default), ``"euclidean"`` or ``"squared_euclidean"``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.2, 1.0]])
        >>> a1, p, a2, n = MultiSimilarityMiner()(x, torch.tensor([0, 0, 1, 1]))
        >>> list(zip(a1.tolist(), p.tolist())), list(zip(a2.tolist(), n.tolist()))[:3]
        ([(0, 1), (1, 0), (2, 3), (3, 2)], [(0, 2), (0, 3), (1, 2)])
    """

    default_distance = "cosine"

    def __init__(self, epsilon: float = 0.1, distance: str | None = None) -> None:
        super().__init__(distance)
        self.epsilon = check_finite_number("epsilon", epsilon)

    def mine(self, matrix, positive, negative, labels, ref_labels) -> Pairs:
        eps = self.epsilon
        if self.is_similarity:
            hardest_neg = matrix.masked_fill(~negative, float("-inf")).amax(1, keepdim=True)
            hardest_pos = matrix.masked_fill(~positive, float("inf")).amin(1, keepdim=True)
            keep_pos = positive & (matrix - eps < hardest_neg)
            keep_neg = negative & (matrix + eps > hardest_pos)
        else:
            hardest_neg = matrix.masked_fill(~negative, float("inf")).amin(1, keepdim=True)
            hardest_pos = matrix.masked_fill(~positive, float("-inf")).amax(1, keepdim=True)
            keep_pos = positive & (matrix + eps > hardest_neg)
            keep_neg = negative & (matrix - eps < hardest_pos)
        if not (bool(positive.any()) and bool(negative.any())):
            keep_pos, keep_neg = keep_pos & False, keep_neg & False
        return _pairs(keep_pos, keep_neg)


class PairMarginMiner(PairMiner):
    r"""Positive pairs farther than ``pos_margin`` and negative pairs closer than ``neg_margin``.

    With a distance :math:`d` (PML's default, Euclidean): positives with :math:`d > m_p`,
    negatives with :math:`d < m_n`; with cosines, positives with :math:`s < m_p` and negatives
    with :math:`s > m_n`.

    Args:
        pos_margin: :math:`m_p`.
        neg_margin: :math:`m_n`.
        distance: ``"euclidean"`` (default), ``"squared_euclidean"`` or ``"cosine"``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
        >>> [t.tolist() for t in PairMarginMiner()(x, torch.tensor([0, 0, 1]))]
        [[0, 1], [1, 0], [0, 2], [2, 0]]
    """

    def __init__(
        self, pos_margin: float = 0.2, neg_margin: float = 0.8, distance: str | None = None
    ) -> None:
        super().__init__(distance)
        self.pos_margin = check_finite_number("pos_margin", pos_margin)
        self.neg_margin = check_finite_number("neg_margin", neg_margin)

    def mine(self, matrix, positive, negative, labels, ref_labels) -> Pairs:
        if self.is_similarity:
            return _pairs(
                positive & (matrix < self.pos_margin), negative & (matrix > self.neg_margin)
            )
        return _pairs(positive & (matrix > self.pos_margin), negative & (matrix < self.neg_margin))


class TripletMarginMiner(PairMiner):
    r"""The triplets whose margin :math:`d_{an} - d_{ap}` is within ``margin`` (PML's miner).

    ``type_of_triplets``: ``"all"`` (:math:`d_{an} - d_{ap} \le m`), ``"hard"``
    (:math:`\le 0` too), ``"semihard"`` (:math:`> 0` too) or ``"easy"`` (:math:`> m`); with
    cosines the margin is :math:`s_{ap} - s_{an}`. Returns ``(a, p, n)`` ordered by anchor,
    positive, negative, listed from all the valid triplets of the batch (O(triplets) memory,
    as PML).

    Args:
        margin: :math:`m`.
        type_of_triplets: see above.
        distance: ``"euclidean"`` (default), ``"squared_euclidean"`` or ``"cosine"``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
        >>> [t.tolist() for t in TripletMarginMiner()(x, torch.tensor([0, 0, 1]))]
        [[0, 1], [1, 0], [2, 2]]
    """

    TYPES = ("all", "hard", "semihard", "easy")

    def __init__(
        self, margin: float = 0.2, type_of_triplets: str = "all", distance: str | None = None
    ) -> None:
        super().__init__(distance)
        self.margin = check_finite_number("margin", margin)
        check_option("type_of_triplets", type_of_triplets, self.TYPES)
        self.type_of_triplets = type_of_triplets

    def mine(self, matrix, positive, negative, labels, ref_labels):
        if matrix.shape[0] != matrix.shape[1]:
            raise ValueError(
                "TripletMarginMiner mines within the batch: `ref_embeddings` are not supported"
            )
        anchors, positives, negatives = AllTripletsMiner().mine(matrix, labels)
        ap, an = matrix[anchors, positives], matrix[anchors, negatives]
        triplet_margin = ap - an if self.is_similarity else an - ap
        if self.type_of_triplets == "easy":
            keep = triplet_margin > self.margin
        else:
            keep = triplet_margin <= self.margin
            if self.type_of_triplets == "hard":
                keep &= triplet_margin <= 0
            elif self.type_of_triplets == "semihard":
                keep &= triplet_margin > 0
        return anchors[keep], positives[keep], negatives[keep]


class BatchEasyHardMiner(PairMiner):
    r"""Per anchor, one positive and one negative chosen by a strategy (PML's miner).

    ``pos_strategy`` / ``neg_strategy``: ``"easy"`` (the closest positive / the farthest
    negative), ``"hard"`` (the farthest positive / the closest negative), ``"semihard"`` (the
    farthest positive still closer than the chosen negative / the closest negative still
    farther than the chosen positive) or ``"all"`` (every pair). ``allowed_pos_range`` /
    ``allowed_neg_range`` ``(lo, hi)`` keep only pairs whose distance (or similarity) lies in
    ``[lo, hi]``. Returns ``(a, p, a, n)`` for the anchors that have both (or the full pair lists
    with ``"all"``).

    Args:
        pos_strategy: default ``"easy"``.
        neg_strategy: default ``"semihard"``.
        allowed_pos_range: optional ``(lo, hi)``.
        allowed_neg_range: optional ``(lo, hi)``.
        distance: ``"euclidean"`` (default), ``"squared_euclidean"`` or ``"cosine"``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]])
        >>> miner = BatchEasyHardMiner(pos_strategy="hard", neg_strategy="hard")
        >>> [t.tolist() for t in miner(x, torch.tensor([0, 0, 1, 1]))]
        [[0, 1, 2, 3], [1, 0, 3, 2], [0, 1, 2, 3], [3, 3, 1, 1]]
    """

    STRATEGIES = ("hard", "semihard", "easy", "all")

    def __init__(
        self,
        pos_strategy: str = "easy",
        neg_strategy: str = "semihard",
        allowed_pos_range: tuple[float, float] | None = None,
        allowed_neg_range: tuple[float, float] | None = None,
        distance: str | None = None,
    ) -> None:
        super().__init__(distance)
        check_option("pos_strategy", pos_strategy, self.STRATEGIES)
        check_option("neg_strategy", neg_strategy, self.STRATEGIES)
        if pos_strategy == neg_strategy == "semihard":
            raise ValueError('`pos_strategy` and `neg_strategy` cannot both be "semihard"')
        if "semihard" in (pos_strategy, neg_strategy) and "all" in (pos_strategy, neg_strategy):
            raise ValueError('"semihard" cannot be used in combination with "all"')
        self.pos_strategy, self.neg_strategy = pos_strategy, neg_strategy
        self.allowed_pos_range = _check_range("allowed_pos_range", allowed_pos_range)
        self.allowed_neg_range = _check_range("allowed_neg_range", allowed_neg_range)

    def _pick(self, matrix, mask, largest, value_range, thresholds=None):
        """The largest / smallest entry of each row among ``mask`` (and the range/threshold)."""
        keep = mask.clone()
        if thresholds is not None:
            keep &= matrix < thresholds[:, None] if largest else matrix > thresholds[:, None]
        if value_range is not None:
            keep &= (matrix >= value_range[0]) & (matrix <= value_range[1])
        fill = float("-inf") if largest else float("inf")
        values, indices = (torch.max if largest else torch.min)(matrix.masked_fill(~keep, fill), 1)
        return values, indices, keep.any(1)

    def _positives(self, matrix, positive, thresholds=None):
        # "hard" and "semihard" positives are the far ones: the largest distance (smallest cosine).
        largest = (self.pos_strategy != "easy") != self.is_similarity
        return self._pick(matrix, positive, largest, self.allowed_pos_range, thresholds)

    def _negatives(self, matrix, negative, thresholds=None):
        # "hard" and "semihard" negatives are the near ones: the smallest distance.
        largest = (self.neg_strategy == "easy") != self.is_similarity
        return self._pick(matrix, negative, largest, self.allowed_neg_range, thresholds)

    def mine(self, matrix, positive, negative, labels, ref_labels) -> Pairs:
        rows = torch.arange(matrix.shape[0], device=matrix.device)
        pos = neg = None
        if self.pos_strategy == "semihard":
            neg = self._negatives(matrix, negative)
            pos = self._positives(matrix, positive, neg[0])
        elif self.neg_strategy == "semihard":
            pos = self._positives(matrix, positive)
            neg = self._negatives(matrix, negative, pos[0])
        else:
            if self.pos_strategy != "all":
                pos = self._positives(matrix, positive)
            if self.neg_strategy != "all":
                neg = self._negatives(matrix, negative)
        if pos is not None and neg is not None:
            both = pos[2] & neg[2]
            return rows[both], pos[1][both], rows[both], neg[1][both]
        a1, p, a2, n = _pairs(positive, negative)
        if pos is not None:
            a1, p = rows[pos[2]], pos[1][pos[2]]
        if neg is not None:
            a2, n = rows[neg[2]], neg[1][neg[2]]
        return a1, p, a2, n


def _check_range(name: str, value: object) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"`{name}` must be a (lo, hi) pair or None, got {value!r}")
    low, high = (check_finite_number(name, part) for part in value)
    if low > high:
        raise ValueError(f"`{name}` must have lo <= hi, got {value!r}")
    return low, high
