"""``VerificationMetrics``: face-verification metrics (LFW/IJB style) over accumulated pairs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from marginkit._validation import check_far_targets, check_n_folds
from marginkit.metrics._plot import figure_and_axes
from marginkit.metrics.direction import directions
from marginkit.metrics.functional.verification import (
    _check_verification_distance,
    _pair_scores,
    _roc,
    _verification_compute,
    _verification_names,
    _verification_update_scores,
)
from marginkit.metrics.retrieval import _is_empty


class VerificationMetrics(Metric):
    r"""Verification metrics of pairs: AUC, EER, TAR@FAR and LFW k-fold accuracy.

    A pair is accepted as "same" when its score is :math:`\ge t`; :math:`\mathrm{TAR}(t)` and
    :math:`\mathrm{FAR}(t)` are the accepted fractions of same and of different pairs.
    ``compute()`` returns ``auc`` (area under the ROC curve), ``eer`` (where
    :math:`\mathrm{FAR} = 1 - \mathrm{TAR}`, interpolated), ``tar@far=<f>`` for each target
    (TAR at the ROC point with the largest FAR :math:`\le f`; the key formats the rate with
    ``f"{f:g}"``, e.g. ``tar@far=0.0001``, ``tar@far=0.001``, ``tar@far=0.01``), and
    ``accuracy`` / ``accuracy_std`` (LFW protocol: ``n_folds`` contiguous folds in update order,
    best threshold chosen on the other folds, mean and population std of the fold accuracies).
    See :func:`~marginkit.metrics.functional.verification_metrics` for details.

    Pairs come as embeddings (``update(emb1, emb2, issame)``, scored by cosine similarity or by
    negative euclidean distance) or as scores (``update_scores(scores, issame)``). The states
    (scores, flags) are lists synchronised with ``dist_reduce_fx="cat"``: AUC, EER and TAR do not
    depend on the order of the pairs, the fold accuracy does (after a DDP sync the order is rank
    0's pairs, then rank 1's, …).

    Args:
        far_targets: false-accept rates in (0, 1] at which the TAR is reported.
        n_folds: folds of the accuracy protocol (>= 2; LFW uses 10).
        distance: how :meth:`update` scores embedding pairs, ``"cosine"`` or ``"euclidean"``.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = VerificationMetrics(far_targets=(0.5,), n_folds=3)
        >>> metric.update_scores(torch.tensor([0.9, 0.8, 0.3]), torch.tensor([True, True, True]))
        >>> metric.update_scores(torch.tensor([0.6, 0.2, 0.1]), torch.tensor([0, 0, 0]))
        >>> result = metric.compute()
        >>> list(result)
        ['auc', 'eer', 'tar@far=0.5', 'accuracy', 'accuracy_std']
        >>> round(float(result["auc"]), 4)
        0.8889
    """

    is_differentiable = False
    # Mixed directions (see higher_is_better_by_name): no single answer.
    higher_is_better = None
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    scores: list[Tensor]
    issame: list[Tensor]

    def __init__(
        self,
        far_targets: float | Sequence[float] = (1e-4, 1e-3, 1e-2),
        n_folds: int = 10,
        distance: str = "cosine",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.far_targets = check_far_targets(far_targets)
        self.n_folds = check_n_folds(n_folds)
        self.distance = _check_verification_distance(distance)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("issame", default=[], dist_reduce_fx="cat")

    @property
    def higher_is_better_by_name(self) -> dict[str, bool]:
        """``{result key: whether larger is better}`` (:mod:`marginkit.metrics.direction`)."""
        return directions(self.names)

    @property
    def names(self) -> list[str]:
        """The keys of :meth:`compute`'s result, in order."""
        return _verification_names(self.far_targets)

    def update(
        self,
        emb1: Tensor | None = None,
        emb2: Tensor | None = None,
        issame: Tensor | None = None,
        *,
        scores: Tensor | None = None,
    ) -> None:
        """Store pairs: (N, D) ``emb1[i]`` vs ``emb2[i]`` with their (N,) ``issame`` flags.

        Or, with ``scores=`` instead of the embeddings, (N,) pair scores (larger = more alike);
        :meth:`update_scores` is the same call. ``issame`` is bool or 0/1 integers.
        """
        if issame is None:
            raise ValueError("`issame` is required")
        if scores is None:
            if emb1 is None or emb2 is None:
                raise ValueError("give `emb1` and `emb2`, or `scores`")
            scores = _pair_scores(emb1, emb2, self.distance)
        elif emb1 is not None or emb2 is not None:
            raise ValueError("give `emb1` and `emb2`, or `scores`, not both")
        scores, issame = _verification_update_scores(scores, issame)
        self.scores.append(scores)
        self.issame.append(issame.to(torch.uint8))

    def update_scores(self, scores: Tensor, issame: Tensor) -> None:
        """Store (N,) pair ``scores`` (larger = more alike) with (N,) bool or 0/1 ``issame``."""
        self.update(issame=issame, scores=scores)

    def _gathered(self) -> tuple[Tensor, Tensor]:
        if _is_empty(self.scores):
            raise ValueError("VerificationMetrics has no pairs: call `update` before `compute`")
        scores = dim_zero_cat(self.scores)
        return scores, dim_zero_cat(self.issame).to(device=scores.device, dtype=torch.bool)

    def compute(self) -> dict[str, Tensor]:
        """Return ``{"auc", "eer", "tar@far=<f>"…, "accuracy", "accuracy_std"}``."""
        scores, issame = self._gathered()
        return _verification_compute(scores, issame, self.far_targets, self.n_folds)

    def plot(
        self, curve: tuple[Tensor, Tensor] | None = None, ax: Any | None = None
    ) -> tuple[Any, Any]:
        """Draw the ROC curve (TAR against FAR, log-FAR axis) with matplotlib.

        The curve has one point per ROC point with FAR > 0 (a log axis cannot show FAR = 0);
        the ``far_targets`` are marked by vertical dotted lines.

        Args:
            curve: ``(far, tar)`` ROC points to draw; None computes them from the stored pairs.
            ax: axes to draw on; None creates a figure.

        Returns:
            ``(fig, ax)``, like torchmetrics' ``plot``.
        """
        if curve is None:
            far, tar, _ = _roc(*self._gathered())
        else:
            far, tar = (torch.as_tensor(values, dtype=torch.float64) for values in curve)
        shown = far > 0
        fig, ax = figure_and_axes(ax)
        ax.plot(far[shown].cpu().numpy(), tar[shown].cpu().numpy(), label=type(self).__name__)
        for target in self.far_targets:
            ax.axvline(target, linestyle=":", color="gray", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("false accept rate (FAR)")
        ax.set_ylabel("true accept rate (TAR)")
        ax.set_ylim(self.plot_lower_bound, self.plot_upper_bound + 0.02)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title("ROC")
        return fig, ax
