r"""Triplet losses: on given (anchor, positive, negative) triplets, and on a batch with a miner.

For a triplet with distances :math:`d_{ap} = d(a, p)` and :math:`d_{an} = d(a, n)`:

.. math::
    \ell = \max(d_{ap} - d_{an} + m, 0) \quad\text{(margin } m\text{)}, \qquad
    \ell = \log(1 + e^{d_{ap} - d_{an}}) \quad\text{(}m = \text{None: the soft triplet loss)}.

:math:`d` is the Euclidean distance (Weinberger & Saul 2009; Schroff et al. 2015, FaceNet;
Hermans et al. 2017 for the soft version), or its square with ``squared=True`` (gluon-face's
``TripletLoss``). A distance between coinciding points is 0 with gradient 0 (no NaN when a
batch repeats an item).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marginkit._validation import REDUCTIONS, check_bool, check_option, check_positive_int
from marginkit.distributed import gather_batch
from marginkit.losses._all_triplets import DEFAULT_MEMORY_BUDGET, all_triplets_loss_sum
from marginkit.losses._loss_utils import check_nonnegative, reduce_loss
from marginkit.miners import AllTripletsMiner, TripletMiner
from marginkit.miners._inputs import (
    check_features_and_labels,
    check_finite_tensor,
    compute_dtype,
    pair_masks,
    pairwise_distances,
    safe_sqrt,
)


def _check_margin(margin: object) -> float | None:
    if margin is None:
        return None
    return check_nonnegative("margin", margin)


def _triplet_values(d_ap: Tensor, d_an: Tensor, margin: float | None) -> Tensor:
    if margin is None:
        return F.softplus(d_ap - d_an)
    return torch.relu(d_ap - d_an + margin)


def _triplet_logs(values: Tensor, d_ap: Tensor, d_an: Tensor, margin: float | None) -> dict:
    with torch.no_grad():
        n = values.numel()
        active = (d_ap - d_an + (margin or 0.0) > 0).sum()
        stats = torch.stack([active.to(d_ap.dtype) / max(n, 1), d_ap.mean(), d_an.mean()]).tolist()
    return {
        "active_fraction": stats[0],
        "pos_dist": stats[1],
        "neg_dist": stats[2],
        "n_triplets": float(n),
    }


class TripletLoss(nn.Module):
    r"""The triplet loss of aligned ``(anchor, positive, negative)`` batches (OML's ``TripletLoss``).

    :math:`\ell_i = \max(d(a_i, p_i) - d(a_i, n_i) + m, 0)`, or
    :math:`\log(1 + e^{d(a_i, p_i) - d(a_i, n_i)})` with ``margin=None`` (soft triplet loss),
    with the Euclidean distance :math:`d` (squared with ``squared=True``: gluon-face's form).
    Distances are computed from the differences directly, so they match
    :func:`torch.nn.functional.triplet_margin_loss` (up to its ``eps=1e-6``).

    Args:
        margin: :math:`m`, a finite number ``>= 0``, or ``None`` for the soft version.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (over triplets).
        squared: use squared Euclidean distances.

    Attributes:
        last_logs: ``active_fraction`` (triplets with :math:`d_{ap} - d_{an} + m > 0`, ``m = 0``
            for the soft version), ``pos_dist`` / ``neg_dist`` (mean :math:`d_{ap}` /
            :math:`d_{an}`), ``n_triplets``.

    Example:
        >>> loss_fn = TripletLoss(margin=0.5)
        >>> anchor, positive = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]])
        >>> negative = torch.tensor([[1.0, 1.0]])
        >>> round(loss_fn(anchor, positive, negative).item(), 4)  # 1 - sqrt(2) + 0.5
        0.0858
    """

    def __init__(
        self, margin: float | None = 0.1, reduction: str = "mean", squared: bool = False
    ) -> None:
        super().__init__()
        self.margin = _check_margin(margin)
        check_option("reduction", reduction, REDUCTIONS)
        self.reduction = reduction
        self.squared = check_bool("squared", squared)
        self.last_logs: dict[str, float] = {}

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        """Return the (reduced) triplet loss of the aligned rows of the three (B, D) batches."""
        for name, value in (("anchor", anchor), ("positive", positive), ("negative", negative)):
            _check_batch(name, value)
        for name, value in (("positive", positive), ("negative", negative)):
            if value.shape != anchor.shape:
                raise ValueError(
                    f"`{name}` must have the shape of `anchor` {tuple(anchor.shape)}, got "
                    f"{tuple(value.shape)}"
                )
        dtype = torch.promote_types(
            torch.promote_types(anchor.dtype, positive.dtype), negative.dtype
        )
        dtype = compute_dtype(dtype)
        anchor = anchor.to(dtype)
        d_ap = self._distance(anchor - positive.to(dtype))
        d_an = self._distance(anchor - negative.to(dtype))
        values = _triplet_values(d_ap, d_an, self.margin)
        self.last_logs = _triplet_logs(values, d_ap, d_an, self.margin)
        return reduce_loss(values, self.reduction)

    def _distance(self, difference: Tensor) -> Tensor:
        squared = difference.square().sum(1)
        return squared if self.squared else safe_sqrt(squared)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}, squared={self.squared}"


class TripletLossPlain(TripletLoss):
    r""":class:`TripletLoss` on one (3B, D) tensor of interleaved triplets (OML's layout).

    Rows ``3i, 3i + 1, 3i + 2`` are the anchor, positive and negative of triplet ``i``, i.e.
    ``torch.stack([anchor, positive, negative], dim=1).reshape(-1, D)``. Same arguments and
    ``last_logs`` as :class:`TripletLoss`.

    Example:
        >>> features = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> round(TripletLossPlain(margin=0.5)(features).item(), 4)
        0.0858
    """

    def forward(self, features: Tensor) -> Tensor:  # type: ignore[override]
        """Return the triplet loss of the (3B, D) interleaved ``features``."""
        _check_batch("features", features)
        if features.shape[0] % 3:
            raise ValueError(
                "`features` must have a multiple of 3 rows (anchor, positive, negative "
                f"interleaved), got {features.shape[0]}"
            )
        return super().forward(features[0::3], features[1::3], features[2::3])


class TripletLossWithMiner(nn.Module):
    r"""The triplet loss over the triplets a miner picks in a batch of ``(features, labels)``.

    .. math::
        L = \frac{1}{|T|} \sum_{(a, p, n) \in T} \ell(d_{ap} - d_{an})

    (``reduction="mean"``; ``"sum"`` drops the :math:`1/|T|`), with :math:`\ell` the hinge with
    margin :math:`m` or the soft version (``margin=None``), and :math:`T` the mined triplets.
    Distances come from one (B, B) Euclidean distance matrix.

    With :class:`~marginkit.miners.AllTripletsMiner` (the default) and every triplet wanted (no
    ``max_triplets``, or fewer triplets than it), the loss is reduced over all
    :math:`\sum_a n_{pos}(a)\, n_{neg}(a)` valid triplets **without listing them**: per anchor
    over the distance matrix, in blocks of ``memory_budget`` bytes, with an exact gradient that
    recomputes the blocks (``torch.ops.marginkit.all_triplets_loss_sum``). Memory is O(B²)
    instead of O(B³): at P×K = 128×8 (7.3 M triplets) a few tens of MiB instead of gigabytes.
    ``reduction="none"`` returns one value per triplet, so it lists them (O(|T|) memory).

    Batches must hold at least two classes, one of them with two items: the class attribute
    ``requires_balanced_batches`` makes the CLI sample P classes × K instances
    (:class:`~marginkit.data.BalancedBatchSampler`). A batch without any valid triplet raises a
    ``ValueError`` (training on it would be silently a no-op).

    Args:
        margin: :math:`m`, a finite number ``>= 0``, or ``None`` for the soft triplet loss.
        miner: a :class:`~marginkit.miners.TripletMiner`; default ``AllTripletsMiner()``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (over triplets).
        gather_embeddings: under DDP, compute the loss over every rank's batch (miners
            see the global batch; the gradient flows back to each rank's own features).
        squared: use squared Euclidean distances.
        memory_budget: bytes of work space per block of the all-triplets reduction.

    Attributes:
        last_logs: ``active_fraction`` (triplets with :math:`d_{ap} - d_{an} + m > 0`, ``m = 0``
            for the soft version), ``pos_dist`` / ``neg_dist`` (mean :math:`d_{ap}` /
            :math:`d_{an}` over the triplets), ``n_triplets``.

    Example:
        >>> features = torch.tensor([[0.0], [1.0], [0.5], [3.0]])
        >>> loss_fn = TripletLossWithMiner(margin=1.0)
        >>> loss_fn(features, torch.tensor([0, 0, 1, 1])).item()  # 11 / 8 triplets
        1.375
        >>> loss_fn.last_logs["n_triplets"], loss_fn.last_logs["active_fraction"]
        (8.0, 0.75)
    """

    requires_balanced_batches = True
    min_instances_per_class = 2

    def __init__(
        self,
        margin: float | None = 0.1,
        miner: TripletMiner | None = None,
        reduction: str = "mean",
        squared: bool = False,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        gather_embeddings: bool = False,
    ) -> None:
        super().__init__()
        self.margin = _check_margin(margin)
        self.gather_embeddings = check_bool("gather_embeddings", gather_embeddings)
        if miner is None:
            miner = AllTripletsMiner()
        if not callable(getattr(miner, "mine", None)):
            raise TypeError(
                "`miner` must be a marginkit.miners.TripletMiner (an object with "
                f"`mine(distances, labels)`), got {type(miner).__name__}"
            )
        self.miner = miner
        check_option("reduction", reduction, REDUCTIONS)
        self.reduction = reduction
        self.squared = check_bool("squared", squared)
        self.memory_budget = check_positive_int("memory_budget", memory_budget)
        self.last_logs: dict[str, float] = {}

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """Return the triplet loss of the batch ``features`` (B, D) with class ``labels`` (B,)."""
        if self.gather_embeddings:
            features, labels = gather_batch(features, labels)
        labels = check_features_and_labels(features, labels)
        distances = pairwise_distances(features, squared=self.squared)
        positive, negative = pair_masks(labels)
        n_pos, n_neg = positive.sum(1), negative.sum(1)
        total = int((n_pos * n_neg).sum())
        if total == 0:
            raise ValueError(
                "`labels` must give at least one valid triplet (a class with 2 items and another "
                f"class), got {labels.unique().numel()} class(es) in a batch of {len(labels)}; "
                "sample batches of P classes x K >= 2 instances (BalancedBatchSampler)"
            )
        if self._reduces_all_triplets(total):
            return self._all_triplets(distances, labels, positive, negative, n_pos, n_neg, total)
        anchors, positives, negatives = self.miner.mine(distances.detach(), labels)
        if len(anchors) == 0:
            raise ValueError(f"`labels`: the miner {self.miner!r} found no triplet in this batch")
        d_ap, d_an = distances[anchors, positives], distances[anchors, negatives]
        values = _triplet_values(d_ap, d_an, self.margin)
        self.last_logs = _triplet_logs(values, d_ap, d_an, self.margin)
        return reduce_loss(values, self.reduction)

    def _reduces_all_triplets(self, total: int) -> bool:
        if type(self.miner) is not AllTripletsMiner or self.reduction == "none":
            return False
        return self.miner.max_triplets is None or total <= self.miner.max_triplets

    def _all_triplets(
        self,
        distances: Tensor,
        labels: Tensor,
        positive: Tensor,
        negative: Tensor,
        n_pos: Tensor,
        n_neg: Tensor,
        total: int,
    ) -> Tensor:
        soft = self.margin is None
        loss_sum, n_active = all_triplets_loss_sum(
            distances, labels, 0.0 if soft else self.margin, soft, self.memory_budget
        )
        with torch.no_grad():
            # Triplet means of d_ap and d_an: each positive pair counts n_neg(a) times, each
            # negative pair n_pos(a) times.
            detached = distances.detach()
            pos_sum = (detached * positive).sum(1).mul(n_neg).sum()
            neg_sum = (detached * negative).sum(1).mul(n_pos).sum()
            stats = (torch.stack([n_active.to(pos_sum.dtype), pos_sum, neg_sum]) / total).tolist()
        self.last_logs = {
            "active_fraction": stats[0],
            "pos_dist": stats[1],
            "neg_dist": stats[2],
            "n_triplets": float(total),
        }
        return loss_sum / total if self.reduction == "mean" else loss_sum

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, reduction={self.reduction!r}, squared={self.squared}, "
            f"memory_budget={self.memory_budget}"
        )


def _check_batch(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}")
    if value.ndim != 2:
        raise ValueError(f"`{name}` must have shape (B, D), got {tuple(value.shape)}")
    if not value.is_floating_point():
        raise ValueError(f"`{name}` must be floating point, got {value.dtype}")
    check_finite_tensor(name, value)
    return value
