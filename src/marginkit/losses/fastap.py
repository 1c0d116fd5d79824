r"""FastAP (Cakir et al., "Deep Metric Learning to Rank", CVPR 2019), pytorch-metric-learning's
``FastAPLoss``."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from marginkit._validation import check_positive_int
from marginkit.losses._pair_batch import check_reducer, pair_batch, reduce_losses
from marginkit.losses.proxy import _miner_weights


def _pulse_sums(distances: Tensor, positive: Tensor, negative: Tensor, center: float, width: float):
    """Σ over the positives / negatives of each row of the triangular pulse at ``center``."""
    pulse = torch.relu(1.0 - (distances - center).abs() / width)
    return (pulse * positive).sum(1), (pulse * negative).sum(1)


class FastAPLoss(nn.Module):
    r"""``1 −`` a histogram approximation of each query's average precision.

    Squared Euclidean distances :math:`d` of the L2-normalised embeddings (in [0, 4], PML's
    ``LpDistance(power=2)``) are binned by triangular pulses at the :math:`L + 1` points
    :math:`z_k = 4k/L`, :math:`\delta_k(d) = [1 - |d - z_k| / (4/L)]_+`; per query :math:`i`,
    :math:`h^+_k = \sum_{p \in P_i} \delta_k(d_{ip})`, :math:`h_k = h^+_k + \sum_{n \in N_i}
    \delta_k(d_{in})` and their running sums :math:`H^+_k`, :math:`H_k`:

    .. math::
        \mathrm{FastAP}_i = \frac{1}{|P_i|} \sum_k \frac{h^+_k H^+_k}{H_k}, \qquad
        \ell_i = 1 - \mathrm{FastAP}_i

    (terms with :math:`h^+_k H^+_k = 0` or :math:`H_k = 0` are 0), averaged over the queries with
    a positive (PML's ``MeanReducer``; with an ``indices_tuple`` each loss is weighted as in
    PML's ``convert_to_weights``). The histograms are not row log-sum-exps, so FastAP does
    not use the fused op: it holds the B × B distances and, per bin, a checkpointed B × B pulse
    (recomputed in the backward), i.e. O(B²) memory, never the (L + 1) × B × B of PML.
    ``ref_embeddings`` are not supported (PML's ``ref_not_supported``).

    Args:
        num_bins: :math:`L`, a positive int.
        reducer: ``"mean"`` (default), ``"avg_nonzero"``, ``"sum"`` or ``"none"`` (per query).

    Attributes:
        last_logs: ``fast_ap`` (mean FastAP of the queries with a positive), ``n_queries``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
        >>> FastAPLoss()(x, torch.tensor([0, 0, 1, 1])).item()  # positives at d = 0: AP = 1
        0.0
    """

    requires_balanced_batches = True
    min_instances_per_class = 2

    def __init__(self, num_bins: int = 10, reducer: str | None = None) -> None:
        super().__init__()
        self.num_bins = check_positive_int("num_bins", num_bins)
        self.reducer = check_reducer(reducer, "mean")
        self.last_logs: dict[str, float] = {}

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        *,
        indices_tuple: tuple[Tensor, ...] | None = None,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        """Return ``1 − FastAP`` of the batch's queries, reduced."""
        if ref_embeddings is not None or ref_labels is not None:
            raise ValueError(
                "FastAPLoss: `ref_embeddings` / `ref_labels` are not supported (PML's "
                "ref_not_supported)"
            )
        batch = pair_batch(embeddings, labels, None, None, None, "squared_euclidean")
        unit, labels = batch.embeddings, batch.labels
        weights = _miner_weights(indices_tuple, labels, unit.dtype, anchors_only=False)
        distances = torch.clamp_min(2.0 - 2.0 * unit @ unit.T, 0.0)
        same = labels[:, None] == labels[None, :]
        positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        positive, negative = positive.to(unit.dtype), (~same).to(unit.dtype)
        width = 4.0 / self.num_bins
        pos_hist, neg_hist = [], []
        for k in range(self.num_bins + 1):
            arguments = (distances, positive, negative, k * width, width)
            if torch.is_grad_enabled() and distances.requires_grad:
                pos, neg = checkpoint(_pulse_sums, *arguments, use_reentrant=False)
            else:
                pos, neg = _pulse_sums(*arguments)
            pos_hist.append(pos)
            neg_hist.append(neg)
        pos_hist, neg_hist = torch.stack(pos_hist, 1), torch.stack(neg_hist, 1)
        product = pos_hist * torch.cumsum(pos_hist, 1)
        total = torch.cumsum(pos_hist + neg_hist, 1)
        safe = (product > 0) & (total > 0)
        fast_ap = torch.where(safe, product / torch.where(safe, total, 1.0), 0.0).sum(1)
        n_pos = positive.sum(1)
        has_pos = n_pos > 0
        fast_ap = fast_ap[has_pos] / n_pos[has_pos]
        losses = 1.0 - fast_ap
        if weights is not None:
            losses = losses * weights[has_pos]
        with torch.no_grad():
            mean_ap = fast_ap.mean() if len(fast_ap) else fast_ap.new_tensor(float("nan"))
            stats = torch.stack([mean_ap, has_pos.sum().to(mean_ap.dtype)]).tolist()
        self.last_logs = dict(zip(("fast_ap", "n_queries"), stats, strict=True))
        if not bool(safe.any()):
            losses = losses[:0]
        return reduce_losses(losses, self.reducer, unit)

    def extra_repr(self) -> str:
        return f"num_bins={self.num_bins}, reducer={self.reducer!r}"
