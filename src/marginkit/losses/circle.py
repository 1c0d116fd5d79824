r"""The Circle loss (Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity
Optimization", CVPR 2020), pytorch-metric-learning's ``CircleLoss``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from marginkit._validation import check_finite_number
from marginkit.losses._pair_batch import PairBatch, PairLoss, check_reducer
from marginkit.ops.masked_similarity import Exponent


class CircleLoss(PairLoss):
    r"""Pair similarities re-weighted by their distance to the optimum, on a circle's boundary.

    With cosine similarities :math:`s` of the L2-normalised embeddings, the optima
    :math:`O_p = 1 + m`, :math:`O_n = -m` and the margins :math:`\Delta_p = 1 - m`,
    :math:`\Delta_n = m`:

    .. math::
        \ell_i = \mathrm{softplus}\Big(
            \log \sum_{p \in P_i} e^{-\gamma [O_p - s_{ip}]_+ (s_{ip} - \Delta_p)}
          + \log \sum_{n \in N_i} e^{\gamma [s_{in} - O_n]_+ (s_{in} - \Delta_n)} \Big)

    for anchors with a positive and a negative (0 for the others), reduced by PML's
    ``AvgNonZeroReducer`` (the mean of the non-zero :math:`\ell_i`). The weights
    :math:`[\cdot]_+` are held constant in the gradient (the paper's and PML's ``detach``). The
    log-sum-exps are row reductions of :func:`~marginkit.ops.masked_similarity_reductions`
    (O(B · block) memory). Cosine only, as in PML.

    Args:
        m: the relaxation margin :math:`m` (paper: 0.25 for face recognition, PML 0.4).
        gamma: the scale :math:`\gamma > 0`.
        reducer: ``"avg_nonzero"`` (default), ``"mean"``, ``"sum"`` or ``"none"`` (per anchor).

    Attributes:
        last_logs: ``pos_value`` / ``neg_value`` (mean similarity of the positive / negative
            pairs), ``n_pos_pairs``, ``n_neg_pairs``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
        >>> round(CircleLoss()(x, torch.tensor([0, 0, 1])).item(), 4)
        3.2008
    """

    def __init__(self, m: float = 0.4, gamma: float = 80.0, reducer: str | None = None) -> None:
        super().__init__("cosine", check_reducer(reducer, "avg_nonzero"))
        self.m = check_finite_number("m", m)
        self.gamma = check_finite_number("gamma", gamma, positive=True)

    def compute(self, batch: PairBatch) -> Tensor:
        m, gamma = self.m, self.gamma
        # φ = a · relu(σ (v − c)) · (v − d): positives a = −γ, σ = −1, c = O_p, d = Δ_p.
        reductions = batch.reductions(
            Exponent(-gamma, 1.0 - m, 1.0 + m, -1), Exponent(gamma, m, -m, 1)
        )
        self.log_pairs(reductions)
        losses = F.softplus(reductions.lse_pos + reductions.lse_neg)
        valid = (reductions.n_pos > 0) & (reductions.n_neg > 0)
        return torch.where(valid, losses, 0.0)

    def extra_repr(self) -> str:
        return f"m={self.m:g}, gamma={self.gamma:g}, reducer={self.reducer!r}"
