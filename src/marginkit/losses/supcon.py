r"""The supervised contrastive loss (Khosla et al., NeurIPS 2020) and NT-Xent / InfoNCE (Chen et
al., "A Simple Framework for Contrastive Learning", 2020), pytorch-metric-learning's
``SupConLoss`` and ``NTXentLoss``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from marginkit._validation import check_finite_number
from marginkit.losses._pair_batch import (
    PairBatch,
    PairLoss,
    check_distance,
    check_reducer,
    log_add_exp,
)
from marginkit.ops.masked_similarity import Exponent


def _signed(batch: PairBatch, temperature: float) -> float:
    """The exponent's scale: :math:`s/\tau` for a similarity, :math:`-d/\tau` for a distance."""
    return (1.0 if batch.is_similarity else -1.0) / temperature


class SupConLoss(PairLoss):
    r"""Every positive of an anchor against all its other pairs, at temperature :math:`\tau`.

    With cosine similarities :math:`s` of the L2-normalised embeddings and
    :math:`A_i = P_i \cup N_i` (every other item):

    .. math::
        \ell_i = -\frac{1}{|P_i|} \sum_{p \in P_i}
            \log \frac{e^{s_{ip}/\tau}}{\sum_{a \in A_i} e^{s_{ia}/\tau}}
        = \log \sum_{a \in A_i} e^{s_{ia}/\tau} - \frac{1}{|P_i|} \sum_{p \in P_i} s_{ip}/\tau

    (the paper's :math:`\mathcal L^{sup}_{out}`; 0 for an anchor without positives), reduced by
    PML's ``AvgNonZeroReducer``; a batch without any positive or any negative pair gives PML's
    zero. One row log-sum-exp and one row sum per anchor
    (:func:`~marginkit.ops.masked_similarity_reductions`, O(B · block) memory). A distance
    replaces :math:`s` by :math:`-d`.

    Args:
        temperature: :math:`\tau > 0`.
        distance: ``"cosine"`` (default), ``"euclidean"`` or ``"squared_euclidean"``.
        reducer: ``"avg_nonzero"`` (default), ``"mean"``, ``"sum"`` or ``"none"`` (per anchor).

    Attributes:
        last_logs: ``pos_value`` / ``neg_value``, ``n_pos_pairs``, ``n_neg_pairs``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> # anchors 0 and 1: log(e^1 + e^0) − 1; anchor 2 has no positive
        >>> round(SupConLoss(temperature=1.0)(x, torch.tensor([0, 0, 1])).item(), 4)
        0.3133
    """

    def __init__(
        self, temperature: float = 0.1, distance: str = "cosine", reducer: str | None = None
    ) -> None:
        super().__init__(check_distance(distance), check_reducer(reducer, "avg_nonzero"))
        self.temperature = check_finite_number("temperature", temperature, positive=True)

    def compute(self, batch: PairBatch) -> Tensor:
        scale = _signed(batch, self.temperature)
        reductions = batch.reductions(Exponent(scale), Exponent(scale))
        self.log_pairs(reductions)
        n_pos = reductions.n_pos
        if not (bool((n_pos > 0).any()) and bool((reductions.n_neg > 0).any())):
            return batch.embeddings.new_zeros(0)
        lse_all = log_add_exp(reductions.lse_pos, reductions.lse_neg)
        losses = lse_all - scale * reductions.sum_pos / n_pos.clamp_min(1.0)
        return torch.where(n_pos > 0, losses, 0.0)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}, {super().extra_repr()}"


class NTXentLoss(PairLoss):
    r"""NT-Xent / InfoNCE: each positive pair against the anchor's negatives, at temperature :math:`\tau`.

    For every positive pair :math:`(i, p)` (both orders; the two views of an item in SimCLR):

    .. math::
        \ell_{ip} = -\log \frac{e^{s_{ip}/\tau}}{e^{s_{ip}/\tau} + \sum_{n \in N_i} e^{s_{in}/\tau}}
        = \mathrm{softplus}\Big(\log \sum_{n \in N_i} e^{s_{in}/\tau} - s_{ip}/\tau\Big),

    averaged over the positive pairs (PML's ``MeanReducer`` over ``pos_pair`` losses; a batch
    without a positive or a negative pair gives PML's zero). The negatives' log-sum-exp is a
    row reduction (:func:`~marginkit.ops.masked_similarity_reductions`); the positive pairs are
    listed (:math:`\sum_i |P_i|` of them) with their similarities. A distance replaces
    :math:`s` by :math:`-d`; with an ``indices_tuple``, a pair listed twice counts twice (PML).

    Args:
        temperature: :math:`\tau > 0` (PML's default 0.07).
        distance: ``"cosine"`` (default), ``"euclidean"`` or ``"squared_euclidean"``.
        reducer: ``"mean"`` (default), ``"avg_nonzero"``, ``"sum"`` or ``"none"`` (per pair).

    Attributes:
        last_logs: ``pos_value`` / ``neg_value``, ``n_pos_pairs``, ``n_neg_pairs``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
        >>> loss_fn = NTXentLoss(temperature=0.5)
        >>> # pair (0, 1): softplus(0/0.5 − 0.6/0.5); pair (1, 0): softplus(0.8/0.5 − 0.6/0.5)
        >>> round(loss_fn(x, torch.tensor([0, 0, 1])).item(), 4)
        0.5881
    """

    count_repeats = True

    def __init__(
        self, temperature: float = 0.07, distance: str = "cosine", reducer: str | None = None
    ) -> None:
        super().__init__(check_distance(distance), check_reducer(reducer, "mean"))
        self.temperature = check_finite_number("temperature", temperature, positive=True)

    def compute(self, batch: PairBatch) -> Tensor:
        scale = _signed(batch, self.temperature)
        reductions = batch.reductions(Exponent(scale), Exponent(scale))
        self.log_pairs(reductions)
        anchors, positives = batch.positive_pairs()
        if len(anchors) == 0 or not bool((reductions.n_neg > 0).any()):
            return batch.embeddings.new_zeros(0)
        positive_logit = scale * batch.pair_values(anchors, positives)
        return F.softplus(reductions.lse_neg[anchors] - positive_logit)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}, {super().extra_repr()}"
