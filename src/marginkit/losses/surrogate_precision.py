r"""A differentiable Precision@k over a batch (Patel, Tolias & Matas 2022; OML's version)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from marginkit._validation import (
    REDUCTIONS,
    check_bool,
    check_finite_number,
    check_option,
    check_positive_int,
)
from marginkit.distributed import gather_batch
from marginkit.losses._all_triplets import DEFAULT_MEMORY_BUDGET
from marginkit.losses._loss_utils import reduce_loss
from marginkit.miners._inputs import check_features_and_labels, pair_masks, pairwise_distances

# Bytes per element of one (queries, relevant slots, B) block: the sigmoid block kept for the
# backward plus the temporaries of its gradient.
_BYTES_PER_ELEMENT = 16


class SurrogatePrecision(nn.Module):
    r"""``1 −`` the sigmoid-relaxed Precision@k of every item of the batch against the others.

    Every item :math:`q` queries the whole batch (itself included, at distance 0, hence
    :math:`k' = k + 1`) with Euclidean distances :math:`d_{qg}`. The rank of a relevant item
    :math:`g` (same label, :math:`q` itself included) and the precision are relaxed with two
    sigmoids :math:`\sigma`:

    .. math::
        r_{qg} = \sum_{g'} \sigma\!\Big(\frac{d_{qg} - d_{qg'}}{\tau_2}\Big), \qquad
        P_q = \frac{\sum_{g:\, y_g = y_q} \sigma\big((k' - r_{qg}) / \tau_1\big)}
                   {\min(|\{g : y_g = y_q\}|,\ k')}, \qquad \ell_q = 1 - P_q

    (the sum over :math:`g'` runs over the whole batch, :math:`g' = g` included). This is
    OML's ``SurrogatePrecision`` (Patel et al., "Recall@k Surrogate Loss with Large Batches and
    Similarity Mixup", CVPR 2022, use :math:`\tau_1 = 1`, :math:`\tau_2 = 0.01`). Smaller
    temperatures are closer to the step functions, with sparser gradients.

    Only the ranks of relevant items are needed, so the work is O(B · K · B) for K items per
    class, evaluated in blocks of queries sized to ``memory_budget`` bytes; when there is more
    than one block, each is recomputed in the backward (activation checkpointing), so memory
    stays O(B² + budget) instead of OML's B×B×B tensor.

    Args:
        k: the :math:`k` of Precision@k. A batch whose gallery (B − 1 items per query) is
            smaller uses :math:`k = B - 1` instead, as OML's ``surrogate_precision`` clamps it,
            with a ``UserWarning`` the first time.
        temperature1: :math:`\tau_1 > 0`, of the sigmoid replacing "rank ≤ k".
        temperature2: :math:`\tau_2 > 0`, of the sigmoid replacing "closer than".
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (over queries, of :math:`1 - P_q`).
        gather_embeddings: under DDP, compute the loss over every rank's batch (miners
            see the global batch; the gradient flows back to each rank's own features).
        memory_budget: bytes of work space per block of queries.

    Attributes:
        last_logs: ``precision`` (mean :math:`P_q`), ``pos_dist`` / ``neg_dist`` (mean distance of
            same-label / other pairs).

    Example:
        >>> loss_fn = SurrogatePrecision(k=1)
        >>> features = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
        >>> # ranks of the relevant items ≈ 0.5 (itself) and 1.5: 1 − (σ(1.5) + σ(0.5)) / 2
        >>> round(loss_fn(features, torch.tensor([0, 0, 1, 1])).item(), 4)
        0.28
    """

    requires_balanced_batches = True
    min_instances_per_class = 2

    def __init__(
        self,
        k: int,
        temperature1: float = 1.0,
        temperature2: float = 0.01,
        reduction: str = "mean",
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        gather_embeddings: bool = False,
    ) -> None:
        super().__init__()
        self.gather_embeddings = check_bool("gather_embeddings", gather_embeddings)
        self.k = check_positive_int("k", k)
        self.temperature1 = check_finite_number("temperature1", temperature1, positive=True)
        self.temperature2 = check_finite_number("temperature2", temperature2, positive=True)
        check_option("reduction", reduction, REDUCTIONS)
        self.reduction = reduction
        self.memory_budget = check_positive_int("memory_budget", memory_budget)
        self.last_logs: dict[str, float] = {}
        self._warned_k = False

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """Return ``1 − P_q`` over the queries of the batch ``features`` (B, D), reduced."""
        if self.gather_embeddings:
            features, labels = gather_batch(features, labels)
        labels = check_features_and_labels(features, labels)
        batch = len(labels)
        k = self._clamped_k(batch - 1)
        distances = pairwise_distances(features)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        n_relevant = same.sum(1)
        max_relevant = int(n_relevant.max())
        # Relevant columns of every query in slots (the first n_relevant[q] slots are valid).
        queries, columns = same.nonzero().unbind(1)
        slot = torch.arange(len(queries), device=labels.device)
        slot = slot - (torch.cumsum(n_relevant, 0) - n_relevant)[queries]
        relevant_idx = torch.zeros(batch, max_relevant, dtype=torch.long, device=labels.device)
        relevant_idx[queries, slot] = columns
        invalid = torch.arange(max_relevant, device=labels.device) >= n_relevant.unsqueeze(1)

        element_bytes = _BYTES_PER_ELEMENT * distances.element_size() // 4
        rows_per_block = max(1, self.memory_budget // (element_bytes * max_relevant * batch))
        blocks = [slice(s, min(s + rows_per_block, batch)) for s in range(0, batch, rows_per_block)]
        numerators = []
        for rows in blocks:
            arguments = (distances[rows], relevant_idx[rows], invalid[rows], k)
            if len(blocks) > 1 and torch.is_grad_enabled() and distances.requires_grad:
                numerators.append(checkpoint(self._numerator, *arguments, use_reentrant=False))
            else:
                numerators.append(self._numerator(*arguments))
        precision = torch.cat(numerators) / n_relevant.clamp_max(k + 1).to(distances.dtype)
        self._log(precision, distances, labels)
        return reduce_loss(1.0 - precision, self.reduction)

    def _clamped_k(self, gallery: int) -> int:
        """``k``, or the gallery size when smaller (OML's clamp), warning once per instance."""
        if self.k <= gallery:
            return self.k
        if not self._warned_k:
            warnings.warn(
                f"`k` ({self.k}) is larger than the gallery of each query (batch size - 1 = "
                f"{gallery}): using k = {gallery} (OML's surrogate_precision clamps k too); "
                "this warning is shown once",
                UserWarning,
                stacklevel=3,
            )
            self._warned_k = True
        return max(gallery, 1)

    def _numerator(
        self, row_distances: Tensor, relevant_idx: Tensor, invalid: Tensor, k: int
    ) -> Tensor:
        """Σ over the relevant items of each query of σ((k' − rank) / τ1), for a block of rows."""
        relevant_distances = row_distances.gather(1, relevant_idx)
        closer = torch.sub(relevant_distances.unsqueeze(2), row_distances.unsqueeze(1))
        rank = closer.div_(self.temperature2).sigmoid_().sum(2)
        within_k = torch.sigmoid((k + 1 - rank) / self.temperature1)
        return within_k.masked_fill(invalid, 0.0).sum(1)

    def _log(self, precision: Tensor, distances: Tensor, labels: Tensor) -> None:
        with torch.no_grad():
            positive, negative = pair_masks(labels)
            detached = distances.detach()
            stats = torch.stack(
                [
                    precision.detach().mean(),
                    (detached * positive).sum() / positive.sum(),
                    (detached * negative).sum() / negative.sum(),
                ]
            ).tolist()
        self.last_logs = dict(zip(("precision", "pos_dist", "neg_dist"), stats, strict=True))

    def extra_repr(self) -> str:
        return (
            f"k={self.k}, temperature1={self.temperature1:g}, "
            f"temperature2={self.temperature2:g}, reduction={self.reduction!r}"
        )
