r"""The lifted structure loss (Song et al., "Deep Metric Learning via Lifted Structured Feature
Embedding", CVPR 2016) and its generalised form (Hermans, Beyer & Leibe, "In Defense of the
Triplet Loss for Person Re-Identification", 2017), pytorch-metric-learning's
``LiftedStructureLoss`` and ``GeneralizedLiftedStructureLoss``."""

from __future__ import annotations

import torch
from torch import Tensor

from marginkit._validation import check_finite_number
from marginkit.losses._pair_batch import (
    PairBatch,
    PairLoss,
    check_distance,
    check_reducer,
    log_add_exp,
    lse_or_zero,
)
from marginkit.ops.masked_similarity import Exponent


def _margins(batch: PairBatch, pos_margin: float, neg_margin: float) -> tuple[Exponent, Exponent]:
    """PML's ``distance.margin``: :math:`d - m_p` / :math:`m_n - d` (similarities: reversed)."""
    if batch.is_similarity:
        return Exponent(-1.0, pos_margin), Exponent(1.0, neg_margin)
    return Exponent(1.0, pos_margin), Exponent(-1.0, neg_margin)


class LiftedStructureLoss(PairLoss):
    r"""Every positive pair against the negatives of both its ends.

    With Euclidean distances :math:`d` of the L2-normalised embeddings (PML's default
    ``LpDistance``), for every positive pair :math:`(i, j)` (both orders):

    .. math::
        \ell_{ij} = \frac{1}{2}\Big[\log\Big(\sum_{n \in N_i} e^{m_n - d_{in}}
            + \sum_{n \in N_j} e^{m_n - d_{jn}}\Big) + d_{ij} - m_p\Big]_+^2

    averaged over the positive pairs (PML's ``MeanReducer``; the log of an empty sum is 0, PML's
    convention, and a batch without a positive or a negative pair gives PML's zero). The
    negatives' log-sum-exps are row reductions
    (:func:`~marginkit.ops.masked_similarity_reductions`); the positive pairs are listed.
    With cosine similarities the margins are reversed (:math:`s - m_n`, :math:`m_p - s`).
    ``ref_embeddings`` are not supported: a pair's second end must be a row of the batch.

    Args:
        neg_margin: :math:`m_n`.
        pos_margin: :math:`m_p`.
        distance: ``"euclidean"`` (default), ``"squared_euclidean"`` or ``"cosine"``.
        reducer: ``"mean"`` (default), ``"avg_nonzero"``, ``"sum"`` or ``"none"`` (per pair).

    Attributes:
        last_logs: ``pos_value`` / ``neg_value``, ``n_pos_pairs``, ``n_neg_pairs``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> # both pairs: ½ [log(2 e^{1 − √2})]², the negative at distance √2 from each end
        >>> round(LiftedStructureLoss()(x, torch.tensor([0, 0, 1])).item(), 4)
        0.0389
    """

    count_repeats = True
    supports_references = False
    references_note = " (the negatives of a positive pair's second end are rows of the batch)"

    def __init__(
        self,
        neg_margin: float = 1.0,
        pos_margin: float = 0.0,
        distance: str = "euclidean",
        reducer: str | None = None,
    ) -> None:
        super().__init__(check_distance(distance), check_reducer(reducer, "mean"))
        self.neg_margin = check_finite_number("neg_margin", neg_margin)
        self.pos_margin = check_finite_number("pos_margin", pos_margin)

    def compute(self, batch: PairBatch) -> Tensor:
        pos_exponent, neg_exponent = _margins(batch, self.pos_margin, self.neg_margin)
        reductions = batch.reductions(pos_exponent, neg_exponent)
        self.log_pairs(reductions)
        anchors, positives = batch.positive_pairs()
        if len(anchors) == 0 or not bool((reductions.n_neg > 0).any()):
            return batch.embeddings.new_zeros(0)
        negatives = lse_or_zero(
            log_add_exp(reductions.lse_neg[anchors], reductions.lse_neg[positives])
        )
        positive = pos_exponent.scale * (batch.pair_values(anchors, positives) - self.pos_margin)
        return torch.relu(negatives + positive).square() / 2.0

    def extra_repr(self) -> str:
        return (
            f"neg_margin={self.neg_margin:g}, pos_margin={self.pos_margin:g}, "
            f"{super().extra_repr()}"
        )


class GeneralizedLiftedStructureLoss(PairLoss):
    r"""Per anchor, a soft maximum over its positives against a soft minimum over its negatives.

    With Euclidean distances :math:`d` of the L2-normalised embeddings:

    .. math::
        \ell_i = \Big[\log \sum_{p \in P_i} e^{d_{ip} - m_p}
            + \log \sum_{n \in N_i} e^{m_n - d_{in}}\Big]_+

    averaged over the B anchors (PML's ``MeanReducer``; the log of an empty sum is 0, PML's
    convention). Both log-sum-exps are row reductions
    (:func:`~marginkit.ops.masked_similarity_reductions`, O(B · block) memory). With cosine
    similarities the margins are reversed (:math:`m_p - s`, :math:`s - m_n`).

    Args:
        neg_margin: :math:`m_n`.
        pos_margin: :math:`m_p`.
        distance: ``"euclidean"`` (default), ``"squared_euclidean"`` or ``"cosine"``.
        reducer: ``"mean"`` (default), ``"avg_nonzero"``, ``"sum"`` or ``"none"`` (per anchor).

    Attributes:
        last_logs: ``pos_value`` / ``neg_value``, ``n_pos_pairs``, ``n_neg_pairs``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> # anchors 0, 1: [0 + 1 − √2]_+ = 0; anchor 2: no positive (0) + log(2 e^{1 − √2})
        >>> round(GeneralizedLiftedStructureLoss()(x, torch.tensor([0, 0, 1])).item(), 4)
        0.093
    """

    def __init__(
        self,
        neg_margin: float = 1.0,
        pos_margin: float = 0.0,
        distance: str = "euclidean",
        reducer: str | None = None,
    ) -> None:
        super().__init__(check_distance(distance), check_reducer(reducer, "mean"))
        self.neg_margin = check_finite_number("neg_margin", neg_margin)
        self.pos_margin = check_finite_number("pos_margin", pos_margin)

    def compute(self, batch: PairBatch) -> Tensor:
        reductions = batch.reductions(*_margins(batch, self.pos_margin, self.neg_margin))
        self.log_pairs(reductions)
        return torch.relu(lse_or_zero(reductions.lse_pos) + lse_or_zero(reductions.lse_neg))

    def extra_repr(self) -> str:
        return (
            f"neg_margin={self.neg_margin:g}, pos_margin={self.pos_margin:g}, "
            f"{super().extra_repr()}"
        )
