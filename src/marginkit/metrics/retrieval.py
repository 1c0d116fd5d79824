"""``RetrievalMetrics``: exact retrieval metrics over accumulated embeddings, DDP-ready."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from marginkit._validation import check_chunking, check_top_k
from marginkit.metrics._plot import figure_and_axes
from marginkit.metrics.direction import directions
from marginkit.metrics.functional._knn import DEFAULT_MEMORY_BUDGET
from marginkit.metrics.functional.retrieval import (
    _check_distance,
    _check_knn_backend,
    _check_metrics,
    _result_names,
    _retrieval_compute,
    _retrieval_update,
)


def _is_empty(state: list[Tensor] | Tensor) -> bool:
    """Whether a ``cat`` state holds no rows (a list before a DDP sync, a tensor after)."""
    return state.numel() == 0 if isinstance(state, Tensor) else len(state) == 0


class RetrievalMetrics(Metric):
    r"""Exact retrieval metrics of accumulated embeddings: CMC@k, precision@k, mAP@k, R-precision, mAP@R.

    For a query with :math:`R` same-label gallery items, relevance :math:`\mathrm{rel}(i)` of its
    :math:`i`-th nearest neighbour and :math:`P(i) = \frac{1}{i}\sum_{j\le i}\mathrm{rel}(j)`:
    ``cmc@k`` :math:`= [\sum_{i\le k}\mathrm{rel}(i) > 0]`, ``precision@k``
    :math:`= \frac{1}{k}\sum_{i\le k}\mathrm{rel}(i)`, ``map@k``
    :math:`= \frac{1}{\min(k,R)}\sum_{i\le k}P(i)\mathrm{rel}(i)`, ``r_precision``
    :math:`= \frac{1}{R}\sum_{i\le R}\mathrm{rel}(i)` and ``map@r``
    :math:`= \frac{1}{R}\sum_{i\le R}P(i)\mathrm{rel}(i)` (Musgrave et al., 2020), each averaged
    over the queries with :math:`R > 0`; the others are counted in ``n_queries_without_match``.

    ``update(embeddings, labels)`` without flags is leave-one-out: every item queries all the
    others. With ``is_query`` / ``is_gallery`` flags, the flagged queries search the flagged
    gallery; an item may be both and never retrieves itself (a missing flag means True for the
    whole batch). Equal scores are ordered by the lower gallery index, the gallery index being the
    item's position in the accumulated data (after a DDP sync: rank 0's items, then rank 1's, …).

    Nearest neighbours are exact, computed by chunked matrix products and a tie-aware top-k on
    the embeddings' device; a chunk of queries never holds more than about ``memory_budget``
    bytes of scores and neighbours (never an N × N matrix). The work is
    :math:`O(Q\,G\,D)` for the scores plus :math:`O(Q\,G)` for the selection, with
    :math:`k = \max(\max(\text{top\_k}), R)` neighbours kept per query when ``r_precision`` or
    ``map@r`` is asked for (only :math:`\max(\text{top\_k})` otherwise).

    The states (embeddings, labels, flags) are lists synchronised with ``dist_reduce_fx="cat"``, so
    a DDP validation gives the numbers of one process on the gathered data.

    Args:
        top_k: the k of ``cmc@k``, ``precision@k`` and ``map@k`` (positive ints).
        metrics: names among ``("precision", "cmc", "map", "r_precision", "map@r")``; None = all.
        chunk_size: queries per chunk; None picks it from ``memory_budget``.
        distance: ``"cosine"`` (larger cosine = nearer) or ``"euclidean"`` (smaller distance =
            nearer).
        memory_budget: bytes of work space per chunk, default 128 MiB.
        knn_backend: ``"torch"`` (default) or ``"faiss"`` (exact flat index; needs faiss, which
            is not a dependency; equal scores at the k-th place may keep different items).
        kwargs: passed to :class:`torchmetrics.Metric` (``sync_on_compute``, ``compute_on_cpu``,
            ``process_group``, …).

    Example:
        >>> import torch
        >>> metric = RetrievalMetrics(top_k=(1, 2))
        >>> metric.update(torch.tensor([[1.0, 0.0], [0.9, 0.1]]), torch.tensor([0, 0]))
        >>> metric.update(torch.tensor([[0.0, 1.0], [0.1, 0.9]]), torch.tensor([1, 2]))
        >>> result = metric.compute()
        >>> float(result["precision@1"]), float(result["cmc@2"]), int(result["n_queries_without_match"])
        (1.0, 1.0, 2)
    """

    is_differentiable = False
    # Mixed directions (see higher_is_better_by_name): no single answer.
    higher_is_better = None
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    embeddings: list[Tensor]
    labels: list[Tensor]
    is_query: list[Tensor]
    is_gallery: list[Tensor]

    def __init__(
        self,
        top_k: int | Sequence[int] = (1, 5, 10),
        metrics: str | Sequence[str] | None = None,
        chunk_size: int | None = None,
        distance: str = "cosine",
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        knn_backend: str = "torch",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.top_k = check_top_k(top_k)
        self.metrics = _check_metrics(metrics)
        check_chunking(chunk_size, memory_budget)
        self.chunk_size = chunk_size
        self.memory_budget = memory_budget
        self.distance = _check_distance(distance)
        self.knn_backend = _check_knn_backend(knn_backend)
        self.add_state("embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self.add_state("is_query", default=[], dist_reduce_fx="cat")
        self.add_state("is_gallery", default=[], dist_reduce_fx="cat")

    @property
    def higher_is_better_by_name(self) -> dict[str, bool]:
        """``{result key: whether larger is better}`` (:mod:`marginkit.metrics.direction`)."""
        return directions(self.names)

    @property
    def names(self) -> list[str]:
        """The keys of :meth:`compute`'s result, in order."""
        return _result_names(self.top_k, self.metrics)

    def update(
        self,
        embeddings: Tensor,
        labels: Tensor,
        is_query: Tensor | None = None,
        is_gallery: Tensor | None = None,
    ) -> None:
        """Store a batch of (N, D) ``embeddings`` with their (N,) integer ``labels``.

        ``is_query`` / ``is_gallery``: optional (N,) bool flags; a missing flag is True for every
        item of the batch. Raises ``ValueError`` for empty, non-finite or mismatched inputs.
        """
        dim = self.embeddings[0].shape[1] if self.embeddings else None
        embeddings, labels, is_query, is_gallery = _retrieval_update(
            embeddings, labels, is_query, is_gallery, dim
        )
        self.embeddings.append(embeddings)
        self.labels.append(labels)
        self.is_query.append(is_query)
        self.is_gallery.append(is_gallery)

    def compute(self) -> dict[str, Tensor]:
        """Return ``{"precision@1": ..., "cmc@1": ..., ..., "n_queries_without_match": ...}``."""
        if _is_empty(self.embeddings):
            raise ValueError("RetrievalMetrics has no embeddings: call `update` before `compute`")
        embeddings = dim_zero_cat(self.embeddings)
        return _retrieval_compute(
            embeddings,
            dim_zero_cat(self.labels).to(embeddings.device),
            dim_zero_cat(self.is_query).to(device=embeddings.device, dtype=torch.bool),
            dim_zero_cat(self.is_gallery).to(device=embeddings.device, dtype=torch.bool),
            self.top_k,
            self.metrics,
            self.distance,
            self.chunk_size,
            self.memory_budget,
            self.knn_backend,
        )

    def plot(self, val: dict[str, Tensor] | None = None, ax: Any | None = None) -> tuple[Any, Any]:
        """Draw CMC@k against k (one point per k of ``top_k``) with matplotlib.

        Args:
            val: a result of :meth:`compute`; None computes it.
            ax: axes to draw on; None creates a figure.

        Returns:
            ``(fig, ax)``, like torchmetrics' ``plot``.
        """
        if "cmc" not in self.metrics:
            raise ValueError(f"`plot` draws cmc@k, which is not among `metrics` {self.metrics}")
        val = self.compute() if val is None else val
        ks = [k for k in self.top_k if f"cmc@{k}" in val]
        fig, ax = figure_and_axes(ax)
        ax.plot(ks, [float(val[f"cmc@{k}"]) for k in ks], marker="o", label=type(self).__name__)
        ax.set_xlabel("k")
        ax.set_ylabel("CMC@k")
        ax.set_xticks(ks)
        ax.set_ylim(self.plot_lower_bound, self.plot_upper_bound + 0.02)
        ax.grid(True, alpha=0.3)
        ax.set_title("Cumulative match characteristic")
        return fig, ax
