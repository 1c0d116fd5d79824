r"""The contrastive loss (Hadsell, Chopra & LeCun 2006) on L2-normalised embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marginkit._validation import REDUCTIONS, check_bool, check_option
from marginkit.distributed import gather_batch
from marginkit.losses._loss_utils import check_nonnegative, reduce_loss
from marginkit.miners._inputs import (
    check_features_and_labels,
    check_finite_tensor,
    compute_dtype,
    pairwise_distances,
    safe_sqrt,
)


class ContrastiveLoss(nn.Module):
    r"""Pull same-label pairs together, push other pairs beyond a margin (gluon-face's form).

    For a pair of unit vectors at Euclidean distance :math:`d` (in [0, 2]) with :math:`y = 1`
    for the same label and 0 otherwise:

    .. math:: \ell = y\, d^2 + (1 - y) \max(m - d, 0)^2

    Both inputs are L2-normalised first (gluon-face expects normalised embeddings; normalising
    twice changes nothing). gluon-face's code takes the norm of the *squared* differences as
    :math:`d`; this uses the Euclidean distance of the paper it cites.

    Two entry points:

    * :meth:`forward` ``(features, labels)``, the batch form used by ``train.py``: every
      unordered pair :math:`i < j` of the batch, :math:`y_{ij} = [\text{label}_i =
      \text{label}_j]`; ``"mean"`` averages over the :math:`B(B-1)/2` pairs, ``"none"`` returns
      them in ``torch.triu_indices(B, B, 1)`` order. O(B²) memory.
    * :meth:`pair_loss` ``(anchor, other, same)``: gluon-face's ``ContrastiveLoss(anchor,
      positive, labels)`` on aligned (N, D) batches with a binary ``same`` per row.

    Batches need pairs of both kinds to learn anything useful, so the class asks the data
    pipeline for P×K batches (``requires_balanced_batches``).

    Args:
        margin: :math:`m`, a finite number ``>= 0`` (distances of unit vectors are at most 2).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (over pairs).
        gather_embeddings: under DDP, compute the loss over every rank's batch (miners
            see the global batch; the gradient flows back to each rank's own features).

    Attributes:
        last_logs: ``pos_dist`` / ``neg_dist`` (mean distance of same-label / other pairs,
            NaN when there is none), ``active_neg_fraction`` (other pairs closer than the
            margin), ``n_pos_pairs`` and ``n_neg_pairs``.

    Example:
        >>> loss_fn = ContrastiveLoss(margin=1.0)
        >>> features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> loss_fn(features, torch.tensor([0, 0, 1])).item()  # pairs: same at 0, others at √2
        0.0
        >>> loss_fn.pair_loss(features[:1], features[2:], torch.tensor([1])).item()  # (√2)²
        2.0
    """

    requires_balanced_batches = True
    min_instances_per_class = 2

    def __init__(
        self, margin: float = 1.0, reduction: str = "mean", gather_embeddings: bool = False
    ) -> None:
        super().__init__()
        self.gather_embeddings = check_bool("gather_embeddings", gather_embeddings)
        self.margin = check_nonnegative("margin", margin)
        check_option("reduction", reduction, REDUCTIONS)
        self.reduction = reduction
        self.last_logs: dict[str, float] = {}

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """Return the contrastive loss over every pair of the batch ``features`` (B, D)."""
        if self.gather_embeddings:
            features, labels = gather_batch(features, labels)
        labels = check_features_and_labels(features, labels)
        if len(labels) < 2:
            raise ValueError(
                f"`features` must hold at least 2 items to form a pair, got {len(labels)}"
            )
        unit = F.normalize(features.to(compute_dtype(features.dtype)), dim=1)
        squared = pairwise_distances(unit, squared=True)
        first, second = torch.triu_indices(len(labels), len(labels), 1, device=labels.device)
        same = labels[first] == labels[second]
        return self._reduce(squared[first, second], same)

    def pair_loss(self, anchor: Tensor, other: Tensor, same: Tensor) -> Tensor:
        """Return the loss of the aligned pairs ``(anchor[i], other[i])``; ``same[i]`` in {0, 1}.

        ``same`` is a (N,) bool or integer/floating 0/1 tensor (gluon-face's ``labels``).
        """
        for name, value in (("anchor", anchor), ("other", other)):
            if not isinstance(value, Tensor):
                raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}")
            if value.ndim != 2 or not value.is_floating_point():
                raise ValueError(
                    f"`{name}` must be a floating (N, D) tensor, got {value.dtype} "
                    f"{tuple(value.shape)}"
                )
            check_finite_tensor(name, value)
        if other.shape != anchor.shape:
            raise ValueError(
                f"`other` must have the shape of `anchor` {tuple(anchor.shape)}, got "
                f"{tuple(other.shape)}"
            )
        if not isinstance(same, Tensor):
            raise TypeError(f"`same` must be a torch.Tensor, got {type(same).__name__}")
        if same.shape != anchor.shape[:1]:
            raise ValueError(
                f"`same` must have shape ({anchor.shape[0]},), got {tuple(same.shape)}"
            )
        if not bool(((same == 0) | (same == 1)).all()):
            raise ValueError("`same` must hold 0/1 (or False/True) values")
        dtype = compute_dtype(torch.promote_types(anchor.dtype, other.dtype))
        difference = F.normalize(anchor.to(dtype), dim=1) - F.normalize(other.to(dtype), dim=1)
        return self._reduce(difference.square().sum(1), same.bool())

    def _reduce(self, squared: Tensor, same: Tensor) -> Tensor:
        distance = safe_sqrt(squared)
        values = torch.where(same, squared, torch.relu(self.margin - distance).square())
        with torch.no_grad():
            different = ~same
            n_pos, n_neg = same.sum(), different.sum()
            stats = torch.stack(
                [
                    (distance * same).sum() / n_pos,
                    (distance * different).sum() / n_neg,
                    ((distance < self.margin) & different).sum() / n_neg.clamp_min(1),
                    n_pos,
                    n_neg,
                ]
            ).tolist()
        names = ("pos_dist", "neg_dist", "active_neg_fraction", "n_pos_pairs", "n_neg_pairs")
        self.last_logs = dict(zip(names, stats, strict=True))
        return reduce_loss(values, self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin:g}, reduction={self.reduction!r}"
