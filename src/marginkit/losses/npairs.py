r"""The N-pair loss (Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss
Objective", NeurIPS 2016), pytorch-metric-learning's ``NPairsLoss``."""

from __future__ import annotations

import torch
from torch import Tensor

from marginkit.losses._pair_batch import (
    PairBatch,
    PairLoss,
    check_distance,
    check_reducer,
    log_add_exp,
)
from marginkit.ops.masked_similarity import Exponent, masked_similarity_reductions


class NPairsLoss(PairLoss):
    r"""One (anchor, positive) pair per class, each anchor classifying its positive among all.

    PML's pairs: of the batch's positive pairs (or those of ``indices_tuple``), in row order,
    the first of each label (``convert_to_pos_pairs_with_unique_labels``): for N such classes,
    anchors :math:`a_k` and positives :math:`p_k`, with cosine similarities :math:`s` of the
    L2-normalised embeddings (PML's ``DotProductSimilarity`` normalises),

    .. math::
        \ell_k = -\log \frac{e^{s(a_k, p_k)}}{\sum_{l=1}^{N} e^{s(a_k, p_l)}},

    averaged over the N anchors (PML's ``MeanReducer``; no pair gives PML's zero). The N × N
    log-sum-exps go through :func:`~marginkit.ops.masked_similarity_reductions`. PML's form
    has no embedding-norm regulariser (the paper's :math:`\lambda \lVert f \rVert^2`).
    ``ref_embeddings`` are not supported (PML's ``ref_not_supported``).

    Args:
        distance: ``"cosine"`` (default), ``"euclidean"`` or ``"squared_euclidean"`` (then
            :math:`s = -d`).
        reducer: ``"mean"`` (default), ``"avg_nonzero"``, ``"sum"`` or ``"none"`` (per anchor).

    Attributes:
        last_logs: ``pos_value`` / ``neg_value`` (mean :math:`s(a_k, p_k)` / :math:`s(a_k, p_l)`),
            ``n_pos_pairs`` (N), ``n_neg_pairs``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
        >>> # two anchors, each: −log(e / (e + 1))
        >>> round(NPairsLoss()(x, torch.tensor([0, 0, 1, 1])).item(), 4)
        0.3133
    """

    supports_references = False
    references_note = " (PML's ref_not_supported)"

    def __init__(self, distance: str = "cosine", reducer: str | None = None) -> None:
        super().__init__(check_distance(distance), check_reducer(reducer, "mean"))

    def compute(self, batch: PairBatch) -> Tensor:
        anchors, positives = batch.positive_pairs()
        if len(anchors) == 0:
            self.last_logs = {"n_pos_pairs": 0.0}
            return batch.embeddings.new_zeros(0)
        # The first pair of each label, in pair order (PML's np.unique(return_index=True)).
        pair_labels = batch.labels[anchors]
        order = torch.argsort(pair_labels, stable=True)
        sorted_labels = pair_labels[order]
        first = torch.ones_like(sorted_labels, dtype=torch.bool)
        first[1:] = sorted_labels[1:] != sorted_labels[:-1]
        chosen = order[first]
        anchors, positives = anchors[chosen], positives[chosen]
        classes = torch.arange(len(anchors), device=anchors.device)
        sign = 1.0 if batch.is_similarity else -1.0
        reductions = masked_similarity_reductions(
            batch.embeddings[anchors],
            batch.references[positives],
            classes,
            classes,
            distance=batch.distance,
            pos_exponent=Exponent(sign),
            neg_exponent=Exponent(sign),
        )
        self.log_pairs(reductions)
        return log_add_exp(reductions.lse_pos, reductions.lse_neg) - sign * reductions.sum_pos
