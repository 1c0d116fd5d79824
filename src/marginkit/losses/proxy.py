r"""Proxy losses: ProxyAnchor (Kim et al., "Proxy Anchor Loss for Deep Metric Learning", CVPR
2020) and ProxyNCA (Movshovitz-Attias et al., "No Fuss Distance Metric Learning using Proxies",
ICCV 2017; the ProxyNCA++ temperature of Teh et al., ECCV 2020, as an option),
pytorch-metric-learning's ``ProxyAnchorLoss`` and ``ProxyNCALoss``.

Both own ``proxies`` (C, D), one learnable vector per class, trained with the module's optimizer
like the heads' ``weight``; initialised as PML does (ProxyAnchor: Kaiming normal, fan-out;
ProxyNCA: ``N(0, 1)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marginkit._validation import check_finite_number, check_label_range, check_positive_int
from marginkit.losses._pair_batch import (
    check_distance,
    check_reducer,
    log_add_exp,
    reduce_losses,
)
from marginkit.miners._inputs import check_features_and_labels
from marginkit.ops.masked_similarity import Exponent, masked_similarity_reductions


def _miner_weights(
    indices_tuple: object, labels: Tensor, dtype: torch.dtype, anchors_only: bool
) -> Tensor | None:
    """PML's ``convert_to_weights``: how often each item appears in the tuple (its anchors
    only with ``anchors_only``), over the largest count; ``None`` without a tuple."""
    if indices_tuple is None:
        return None
    if not isinstance(indices_tuple, (tuple, list)) or len(indices_tuple) not in (3, 4):
        raise ValueError(
            "`indices_tuple` must be a miner's (anchors, positives, negatives) or (a1, p, a2, n), "
            f"got {type(indices_tuple).__name__}"
        )
    if any(not isinstance(part, Tensor) or part.ndim != 1 for part in indices_tuple):
        raise ValueError("`indices_tuple` must hold 1-D integer tensors")
    weights = torch.zeros(len(labels), dtype=dtype, device=labels.device)
    if all(len(part) == 0 for part in indices_tuple):
        return weights + 1.0
    parts = indices_tuple
    if anchors_only:
        parts = parts[:1] if len(parts) == 3 else (parts[0], parts[2])
    every = torch.cat([part.long() for part in parts])
    if len(every) and (int(every.min()) < 0 or int(every.max()) >= len(labels)):
        raise ValueError(f"`indices_tuple` indices must be in [0, {len(labels)})")
    indices, counts = torch.unique(every, return_counts=True)
    weights[indices] = counts.to(dtype) / counts.max()
    return weights


class _ProxyLoss(nn.Module):
    requires_balanced_batches = False

    def __init__(self, num_classes: int, embedding_size: int, distance: str, reducer: str):
        super().__init__()
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.embedding_size = check_positive_int("embedding_size", embedding_size)
        self.proxies = nn.Parameter(torch.empty(num_classes, embedding_size))
        self.reset_proxies()
        self.distance, self.reducer = distance, reducer
        self.last_logs: dict[str, float] = {}

    def reset_proxies(self) -> None:
        """PML's default initialisation of the proxies: ``N(0, 1)``."""
        nn.init.normal_(self.proxies)

    def _inputs(self, embeddings, labels, ref_embeddings, ref_labels) -> tuple[Tensor, Tensor]:
        labels = check_features_and_labels(embeddings, labels)
        if ref_embeddings is not None or ref_labels is not None:
            raise ValueError(
                f"{type(self).__name__} compares embeddings with its proxies: "
                "`ref_embeddings` / `ref_labels` are not supported (PML's ref_not_supported)"
            )
        if embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"`embeddings` must have shape (B, {self.embedding_size}), got "
                f"{tuple(embeddings.shape)}"
            )
        check_label_range(labels, None, self.num_classes, None, name="labels")
        dtype = torch.float32 if embeddings.dtype in (torch.float16, torch.bfloat16) else None
        return F.normalize(embeddings.to(dtype or embeddings.dtype), dim=1), labels

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embedding_size={self.embedding_size}"


class ProxyAnchorLoss(_ProxyLoss):
    r"""Each proxy is an anchor pulling its class's embeddings and pushing the others.

    With cosines :math:`s(x, p)` of the L2-normalised embeddings and proxies, :math:`X_c^+` the
    batch's items of class :math:`c`, :math:`X_c^-` the others and :math:`C^+` the classes
    present in the batch:

    .. math::
        L = \frac{1}{|C^+|} \sum_{c \in C^+} \log\Big(1 + \sum_{x \in X_c^+}
            e^{-\alpha (s(x, p_c) - \delta)}\Big)
          + \frac{1}{C} \sum_{c} \log\Big(1 + \sum_{x \in X_c^-} e^{\alpha (s(x, p_c) + \delta)}\Big)

    (PML's ``DivisorReducer`` divisors). The sums over the batch are row log-sum-exps of the
    transposed problem, proxies × batch, through
    :func:`~marginkit.ops.masked_similarity_reductions`: O(C · block) memory instead of several
    C × B matrices. With an ``indices_tuple`` each embedding's exponent gets :math:`w_x - 1`,
    :math:`w_x` how often a miner picked it over the largest count (PML 2.x's
    ``convert_to_weights``); that case is computed on the materialised C × B matrix.

    Args:
        num_classes: :math:`C`.
        embedding_size: :math:`D`.
        margin: :math:`\delta`.
        alpha: :math:`\alpha > 0`, the scale.

    Attributes:
        proxies: ``(C, D)`` learnable proxies.
        last_logs: ``pos_loss`` and ``neg_loss`` (the two terms), ``n_classes_present``.

    Example:
        >>> torch.manual_seed(0) and None
        >>> loss_fn = ProxyAnchorLoss(num_classes=3, embedding_size=2)
        >>> with torch.no_grad():
        ...     _ = loss_fn.proxies.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> # pos ≈ 0 (cosine 1 to the own proxy); each proxy has a negative at cosine 0:
        >>> # neg = 3 · log(1 + e^{32 · 0.1}) / 3
        >>> round(loss_fn(x, torch.tensor([0, 1])).item(), 4)
        3.24
    """

    def __init__(
        self, num_classes: int, embedding_size: int, margin: float = 0.1, alpha: float = 32.0
    ) -> None:
        super().__init__(num_classes, embedding_size, "cosine", "divisor")
        self.margin = check_finite_number("margin", margin)
        self.alpha = check_finite_number("alpha", alpha, positive=True)

    def reset_proxies(self) -> None:
        """PML's initialisation of ProxyAnchor's proxies: Kaiming normal, fan-out."""
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        *,
        indices_tuple: tuple[Tensor, ...] | None = None,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        """Return the ProxyAnchor loss of the batch ``embeddings`` (B, D) with ``labels`` (B,)."""
        unit, labels = self._inputs(embeddings, labels, ref_embeddings, ref_labels)
        proxies = F.normalize(self.proxies.to(unit.dtype), dim=1)
        weights = _miner_weights(indices_tuple, labels, unit.dtype, anchors_only=False)
        if weights is None:
            reductions = masked_similarity_reductions(
                proxies,
                unit,
                torch.arange(self.num_classes, device=labels.device),
                labels,
                pos_exponent=Exponent(-self.alpha, self.margin),
                neg_exponent=Exponent(self.alpha, -self.margin),
            )
            pos_term, neg_term = F.softplus(reductions.lse_pos), F.softplus(reductions.lse_neg)
            present = reductions.n_pos > 0
        else:
            cosines = proxies @ unit.T
            positive = (
                labels[None, :] == torch.arange(self.num_classes, device=labels.device)[:, None]
            )
            pos_exp = -self.alpha * (cosines - self.margin) + (weights - 1.0)
            neg_exp = self.alpha * (cosines + self.margin) + (weights - 1.0)
            pos_term = F.softplus(torch.logsumexp(pos_exp.masked_fill(~positive, -torch.inf), 1))
            neg_term = F.softplus(torch.logsumexp(neg_exp.masked_fill(positive, -torch.inf), 1))
            present = positive.any(1)
        n_present = present.sum()
        pos_loss = pos_term.sum() / n_present.clamp_min(1)
        neg_loss = neg_term.sum() / self.num_classes
        with torch.no_grad():
            stats = torch.stack([pos_loss, neg_loss, n_present.to(pos_loss.dtype)]).tolist()
        self.last_logs = dict(
            zip(("pos_loss", "neg_loss", "n_classes_present"), stats, strict=True)
        )
        return pos_loss + neg_loss

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin:g}, alpha={self.alpha:g}"


class ProxyNCALoss(_ProxyLoss):
    r"""Neighbourhood component analysis against one proxy per class.

    With the squared Euclidean distances :math:`d^2(x, p)` of the L2-normalised embeddings and
    proxies (PML's default ``LpDistance(power=2)``) and the scale :math:`\sigma`:

    .. math::
        \ell_i = -\log \frac{e^{-\sigma d^2(x_i, p_{y_i})}}{\sum_{c} e^{-\sigma d^2(x_i, p_c)}}

    averaged over the rows (PML's ``MeanReducer``; rows whose probability underflows to 0 are
    dropped, as in PML). The softmax denominator includes the own class, as PML's (the paper
    excludes it). ProxyNCA++ (Teh et al. 2020) sets :math:`\sigma = 1/T` with a small
    temperature :math:`T` (their 1/9): pass ``temperature=T``. Both log-sum-exps are row
    reductions of :func:`~marginkit.ops.masked_similarity_reductions` over the C proxies.
    With an ``indices_tuple``, each row's loss is weighted by how often a miner picked it as an
    anchor, over the largest count (PML's ``convert_to_weights(using_ref=True)``).

    Args:
        num_classes: :math:`C`.
        embedding_size: :math:`D`.
        softmax_scale: :math:`\sigma > 0`.
        temperature: ProxyNCA++'s :math:`T > 0`, instead of ``softmax_scale`` (``None``: off).
        distance: ``"squared_euclidean"`` (default), ``"euclidean"`` or ``"cosine"`` (then
            :math:`-d^2` is replaced by the cosine).
        reducer: ``"mean"`` (default), ``"avg_nonzero"``, ``"sum"`` or ``"none"``.

    Attributes:
        proxies: ``(C, D)`` learnable proxies.
        last_logs: ``pos_value`` (mean distance to the own proxy), ``n_rows``.

    Example:
        >>> loss_fn = ProxyNCALoss(num_classes=2, embedding_size=2)
        >>> with torch.no_grad():
        ...     _ = loss_fn.proxies.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        >>> # d² = 0 to the own proxy, 2 to the other: −log(1 / (1 + e^{−2}))
        >>> round(loss_fn(torch.tensor([[2.0, 0.0]]), torch.tensor([0])).item(), 4)
        0.1269
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        softmax_scale: float = 1.0,
        temperature: float | None = None,
        distance: str = "squared_euclidean",
        reducer: str | None = None,
    ) -> None:
        super().__init__(
            num_classes, embedding_size, check_distance(distance), check_reducer(reducer, "mean")
        )
        self.softmax_scale = check_finite_number("softmax_scale", softmax_scale, positive=True)
        if temperature is not None:
            temperature = check_finite_number("temperature", temperature, positive=True)
            if softmax_scale != 1.0:
                raise ValueError(
                    "give `temperature` (ProxyNCA++) or `softmax_scale`, not both, got "
                    f"temperature={temperature}, softmax_scale={softmax_scale}"
                )
        self.temperature = temperature

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        *,
        indices_tuple: tuple[Tensor, ...] | None = None,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        """Return the ProxyNCA loss of the batch ``embeddings`` (B, D) with ``labels`` (B,)."""
        unit, labels = self._inputs(embeddings, labels, ref_embeddings, ref_labels)
        proxies = F.normalize(self.proxies.to(unit.dtype), dim=1)
        scale = self.softmax_scale if self.temperature is None else 1.0 / self.temperature
        scale = scale if self.distance == "cosine" else -scale
        reductions = masked_similarity_reductions(
            unit,
            proxies,
            labels,
            torch.arange(self.num_classes, device=labels.device),
            distance=self.distance,
            pos_exponent=Exponent(scale),
            neg_exponent=Exponent(scale),
        )
        losses = log_add_exp(reductions.lse_pos, reductions.lse_neg) - reductions.lse_pos
        weights = _miner_weights(indices_tuple, labels, losses.dtype, anchors_only=True)
        if weights is not None:
            losses = losses * weights
        kept = torch.isfinite(losses)  # PML drops rows whose own-class probability is 0
        with torch.no_grad():
            stats = torch.stack([reductions.sum_pos.mean(), kept.sum().to(losses.dtype)]).tolist()
        self.last_logs = dict(zip(("pos_value", "n_rows"), stats, strict=True))
        return reduce_losses(losses[kept], self.reducer, unit)

    def extra_repr(self) -> str:
        scale = (
            f"softmax_scale={self.softmax_scale:g}"
            if self.temperature is None
            else f"temperature={self.temperature:g}"
        )
        return f"{super().extra_repr()}, {scale}, distance={self.distance!r}"
