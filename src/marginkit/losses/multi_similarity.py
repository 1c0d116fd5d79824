r"""The multi-similarity loss (Wang et al., "Multi-Similarity Loss with General Pair Weighting for
Deep Metric Learning", CVPR 2019), pytorch-metric-learning's ``MultiSimilarityLoss``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from marginkit._validation import check_finite_number
from marginkit.losses._pair_batch import PairBatch, PairLoss, check_distance, check_reducer
from marginkit.ops.masked_similarity import Exponent


class MultiSimilarityLoss(PairLoss):
    r"""Soft-weighted positive and negative pairs of every anchor, around the threshold :math:`\lambda`.

    With cosine similarities :math:`S_{ij}` of the L2-normalised embeddings and the anchor's
    positives :math:`P_i` and negatives :math:`N_i`:

    .. math::
        \ell_i = \frac{1}{\alpha} \log\Big(1 + \sum_{p \in P_i} e^{-\alpha (S_{ip} - \lambda)}\Big)
        + \frac{1}{\beta} \log\Big(1 + \sum_{n \in N_i} e^{\beta (S_{in} - \lambda)}\Big),

    averaged over the B anchors (PML's ``MeanReducer``; an anchor without pairs contributes 0).
    With a distance (``"euclidean"``, ``"squared_euclidean"``) the signs flip as in PML
    (:math:`\alpha (d - \lambda)`, :math:`\beta (\lambda - d)`). The sums over pairs are row
    log-sum-exps of :func:`~marginkit.ops.masked_similarity_reductions`: O(B · block) memory
    whatever the reference set (the batch, ``ref_embeddings``).

    Args:
        alpha: :math:`\alpha > 0`, the positives' scale.
        beta: :math:`\beta > 0`, the negatives' scale.
        base: :math:`\lambda`, the similarity threshold.
        distance: ``"cosine"`` (PML's default), ``"euclidean"`` or ``"squared_euclidean"``.
        reducer: ``"mean"`` (default), ``"avg_nonzero"``, ``"sum"`` or ``"none"`` (per anchor).

    Attributes:
        last_logs: ``pos_value`` / ``neg_value`` (mean similarity of the positive / negative
            pairs), ``n_pos_pairs``, ``n_neg_pairs``.

    Example:
        >>> import math, torch
        >>> loss_fn = MultiSimilarityLoss()
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
        >>> labels = torch.tensor([0, 0, 1, 1])  # S = 1 for positives, 0 for negatives
        >>> value = math.log(1 + math.exp(-1)) / 2 + math.log(1 + 2 * math.exp(-25)) / 50
        >>> round(loss_fn(x, labels).item() - value, 8)
        0.0
    """

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 50.0,
        base: float = 0.5,
        distance: str = "cosine",
        reducer: str | None = None,
    ) -> None:
        super().__init__(check_distance(distance), check_reducer(reducer, "mean"))
        self.alpha = check_finite_number("alpha", alpha, positive=True)
        self.beta = check_finite_number("beta", beta, positive=True)
        self.base = check_finite_number("base", base)

    def compute(self, batch: PairBatch) -> Tensor:
        sign = 1.0 if batch.is_similarity else -1.0
        reductions = batch.reductions(
            Exponent(-sign * self.alpha, self.base), Exponent(sign * self.beta, self.base)
        )
        self.log_pairs(reductions)
        # log(1 + Σ e^φ) = softplus(log Σ e^φ); an empty set gives softplus(−inf) = 0.
        return F.softplus(reductions.lse_pos) / self.alpha + F.softplus(reductions.lse_neg) / (
            self.beta
        )

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha:g}, beta={self.beta:g}, base={self.base:g}, {super().extra_repr()}"
        )
