"""Retrieval metrics from embeddings and labels: CMC@k, precision@k, mAP@k, R-precision, mAP@R."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from marginkit._validation import (
    check_choice,
    check_chunking,
    check_embedding_matrix,
    check_flags,
    check_label_vector,
    check_metric_names,
    check_top_k,
)
from marginkit.metrics.functional._knn import (
    DEFAULT_MEMORY_BUDGET,
    DISTANCES,
    KNN_BACKENDS,
    exact_neighbours,
    faiss_neighbours,
    import_faiss,
    prepare_embeddings,
)

AT_K_METRICS = ("precision", "cmc", "map")
AT_R_METRICS = ("r_precision", "map@r")
RETRIEVAL_METRICS = AT_K_METRICS + AT_R_METRICS


# The old private name, still imported by marginkit.models.
_check_top_k = check_top_k


def _check_metrics(metrics: str | Sequence[str] | None) -> tuple[str, ...]:
    return check_metric_names(metrics, RETRIEVAL_METRICS)


def _check_distance(distance: str) -> str:
    return check_choice("distance", distance, DISTANCES)


def _check_knn_backend(knn_backend: str) -> str:
    check_choice("knn_backend", knn_backend, KNN_BACKENDS)
    if knn_backend == "faiss":
        import_faiss()  # installed?
    return knn_backend


def _retrieval_update(
    embeddings: Tensor,
    labels: Tensor,
    is_query: Tensor | None = None,
    is_gallery: Tensor | None = None,
    dim: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validate one batch; return detached ``(embeddings, labels, is_query, is_gallery)``."""
    check_embedding_matrix("embeddings", embeddings, dim)
    size, device = embeddings.shape[0], embeddings.device
    labels = check_label_vector("labels", labels, size, device)
    is_query = check_flags("is_query", is_query, size, device)
    is_gallery = check_flags("is_gallery", is_gallery, size, device)
    return embeddings.detach(), labels, is_query, is_gallery


# --------------------------------------------------------------------------------------------
# Computation (shared by RetrievalMetrics.compute and retrieval_metrics)
# --------------------------------------------------------------------------------------------
def _result_names(top_k: tuple[int, ...], metrics: tuple[str, ...]) -> list[str]:
    names = [f"{name}@{k}" for name in AT_K_METRICS if name in metrics for k in top_k]
    names += [name for name in AT_R_METRICS if name in metrics]
    return [*names, "n_queries_without_match"]


def _retrieval_compute(
    embeddings: Tensor,
    labels: Tensor,
    is_query: Tensor,
    is_gallery: Tensor,
    top_k: tuple[int, ...],
    metrics: tuple[str, ...],
    distance: str,
    chunk_size: int | None,
    memory_budget: int,
    knn_backend: str,
) -> dict[str, Tensor]:
    """Retrieval metrics of the items flagged ``is_query`` against those flagged ``is_gallery``.

    An item that is both never retrieves itself. Gallery indices (for the tie rule) are the
    positions of the gallery items in ``embeddings``.
    """
    device = embeddings.device
    query_items = is_query.nonzero().squeeze(1)
    gallery_items = is_gallery.nonzero().squeeze(1)
    if query_items.numel() == 0:
        raise ValueError("no item is a query: `is_query` is False for every item")
    if gallery_items.numel() == 0:
        raise ValueError("the gallery is empty: `is_gallery` is False for every item")
    num_items, num_gallery = embeddings.shape[0], gallery_items.numel()

    gallery_position = torch.full((num_items,), -1, dtype=torch.long, device=device)
    gallery_position[gallery_items] = torch.arange(num_gallery, device=device)
    self_position = gallery_position[query_items]
    query_labels = labels[query_items]
    gallery_labels = labels[gallery_items]

    # R: same-label gallery items per query, counted by label (no Q × G matrix), minus itself.
    classes, class_counts = torch.unique(gallery_labels, return_counts=True)
    slot = torch.searchsorted(classes, query_labels).clamp_max(classes.numel() - 1)
    in_gallery = classes[slot] == query_labels
    n_relevant = torch.where(in_gallery, class_counts[slot], 0) - (self_position >= 0).long()

    has_match = n_relevant > 0
    n_without = int((~has_match).sum())
    kept = has_match.nonzero().squeeze(1)
    query_items, self_position = query_items[kept], self_position[kept]
    query_labels, n_relevant = query_labels[kept], n_relevant[kept]

    need_at_k = any(name in metrics for name in AT_K_METRICS)
    need_at_r = any(name in metrics for name in AT_R_METRICS)
    k_max = max(top_k) if need_at_k else 1
    k_per_query = n_relevant.clamp_min(k_max) if need_at_r else torch.full_like(n_relevant, k_max)

    names = _result_names(top_k, metrics)
    # Float64 sums kept on the device: no host sync per chunk.
    sums = {name: torch.zeros((), dtype=torch.float64, device=device) for name in names[:-1]}
    if kept.numel():
        prepared = prepare_embeddings(embeddings, distance)
        # Leave-one-out uses the prepared embeddings as they are (no copies).
        query = prepared if query_items.numel() == num_items else prepared[query_items]
        gallery = prepared if num_gallery == num_items else prepared[gallery_items]
        search = faiss_neighbours if knn_backend == "faiss" else exact_neighbours
        chunks = search(
            query,
            gallery,
            self_position,
            k_per_query,
            distance,
            chunk_size,
            memory_budget,
        )
        for rows, neighbours in chunks:
            _accumulate(
                sums,
                neighbours,
                gallery_labels,
                query_labels[rows],
                self_position[rows],
                n_relevant[rows],
                top_k,
                metrics,
            )

    n_valid = kept.numel()
    results = {
        name: (total / n_valid if n_valid else total + math.nan).float()
        for name, total in sums.items()
    }
    results["n_queries_without_match"] = torch.tensor(n_without, device=device)
    return results


def _accumulate(
    sums: dict[str, Tensor],
    neighbours: Tensor,
    gallery_labels: Tensor,
    query_labels: Tensor,
    self_position: Tensor,
    n_relevant: Tensor,
    top_k: tuple[int, ...],
    metrics: tuple[str, ...],
) -> None:
    """Add one chunk's per-query values to ``sums`` (float64 accumulation)."""
    relevant = gallery_labels[neighbours] == query_labels.unsqueeze(1)
    relevant &= neighbours != self_position.unsqueeze(1)
    width = max(relevant.shape[1], max(top_k))
    if width > relevant.shape[1]:  # fewer gallery items than k: missing places are misses
        padding = relevant.new_zeros(relevant.shape[0], width - relevant.shape[1])
        relevant = torch.cat([relevant, padding], dim=1)
    relevant = relevant.double()
    hits = relevant.cumsum(1)
    ranks = torch.arange(1, width + 1, dtype=torch.float64, device=relevant.device)
    ap_sum = (hits / ranks * relevant).cumsum(1)  # Σ_{i ≤ j} P(i)·rel(i)
    r_count = n_relevant.double()
    for k in top_k:
        hits_k = hits[:, k - 1]
        if "precision" in metrics:
            sums[f"precision@{k}"] += hits_k.sum() / k
        if "cmc" in metrics:
            sums[f"cmc@{k}"] += (hits_k > 0).sum()
        if "map" in metrics:
            sums[f"map@{k}"] += (ap_sum[:, k - 1] / r_count.clamp_max(k)).sum()
    at_r = (n_relevant - 1).unsqueeze(1)
    if "r_precision" in metrics:
        sums["r_precision"] += (hits.gather(1, at_r).squeeze(1) / r_count).sum()
    if "map@r" in metrics:
        sums["map@r"] += (ap_sum.gather(1, at_r).squeeze(1) / r_count).sum()


def retrieval_metrics(
    query: Tensor,
    query_labels: Tensor,
    gallery: Tensor | None = None,
    gallery_labels: Tensor | None = None,
    top_k: int | Sequence[int] = (1, 5, 10),
    metrics: str | Sequence[str] | None = None,
    distance: str = "cosine",
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    knn_backend: str = "torch",
) -> dict[str, Tensor]:
    r"""Exact retrieval metrics of ``query`` embeddings against a gallery.

    For a query with :math:`R` same-label gallery items and relevance :math:`\mathrm{rel}(i)` of
    its :math:`i`-th nearest neighbour, :math:`P(i) = \frac{1}{i}\sum_{j \le i}\mathrm{rel}(j)`:

    .. math::
        \mathrm{cmc@}k = [\textstyle\sum_{i\le k}\mathrm{rel}(i) > 0],\quad
        \mathrm{precision@}k = \frac{1}{k}\sum_{i\le k}\mathrm{rel}(i),\quad
        \mathrm{map@}k = \frac{1}{\min(k, R)}\sum_{i\le k} P(i)\,\mathrm{rel}(i),

        \mathrm{r\_precision} = \frac{1}{R}\sum_{i\le R}\mathrm{rel}(i),\quad
        \mathrm{map@r} = \frac{1}{R}\sum_{i\le R} P(i)\,\mathrm{rel}(i),

    each averaged over the queries with :math:`R > 0`; the others are counted in
    ``n_queries_without_match`` (all averages are NaN when no query has a match). Equal scores
    are ordered by the lower gallery index. If the gallery holds fewer than k items, the missing
    places count as misses.

    Without ``gallery``: leave-one-out, every query retrieves among all the other queries.
    With ``gallery``: queries and gallery are different items.

    Args:
        query: (Q, D) query embeddings.
        query_labels: (Q,) integer labels.
        gallery: (G, D) gallery embeddings, or None for leave-one-out on ``query``.
        gallery_labels: (G,) integer labels, given exactly when ``gallery`` is.
        top_k: the k of ``cmc@k``, ``precision@k`` and ``map@k``.
        metrics: names among ``("precision", "cmc", "map", "r_precision", "map@r")``; None = all.
        distance: ``"cosine"`` (larger cosine = nearer) or ``"euclidean"``.
        chunk_size: queries per chunk; None picks it from ``memory_budget``.
        memory_budget: bytes of work space per chunk (scores and neighbours), default 128 MiB.
        knn_backend: ``"torch"`` (exact, chunked) or ``"faiss"`` (exact flat index; needs faiss;
            equal scores at the k-th place may keep different items).

    Returns:
        ``{"precision@1": ..., "cmc@1": ..., "map@1": ..., "r_precision": ..., "map@r": ...,
        "n_queries_without_match": ...}`` as 0-d tensors (float32; the count is int64).

    Example:
        >>> import torch
        >>> embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> labels = torch.tensor([0, 0, 1, 2])
        >>> result = retrieval_metrics(embeddings, labels, top_k=(1, 2))
        >>> float(result["precision@1"]), float(result["map@r"])
        (1.0, 1.0)
        >>> int(result["n_queries_without_match"])
        2
    """
    top_k = check_top_k(top_k)
    metrics = _check_metrics(metrics)
    distance = _check_distance(distance)
    knn_backend = _check_knn_backend(knn_backend)
    check_chunking(chunk_size, memory_budget)
    if (gallery is None) != (gallery_labels is None):
        raise ValueError("`gallery` and `gallery_labels` must be given together (or neither)")
    query, query_labels, _, _ = _retrieval_update(query, query_labels)
    if gallery is None:
        flags = torch.ones(query.shape[0], dtype=torch.bool, device=query.device)
        state = (query, query_labels, flags, flags)
    else:
        check_embedding_matrix("gallery", gallery, query.shape[1])
        if gallery.device != query.device:
            raise ValueError(
                f"`gallery` must be on the device of `query` ({query.device}), got {gallery.device}"
            )
        gallery_labels = check_label_vector(
            "gallery_labels", gallery_labels, len(gallery), query.device
        )
        num_query, num_gallery = query.shape[0], gallery.shape[0]
        dtype = torch.promote_types(query.dtype, gallery.dtype)
        state = (
            torch.cat([query.to(dtype), gallery.detach().to(dtype)]),
            torch.cat([query_labels, gallery_labels]),
            torch.arange(num_query + num_gallery, device=query.device) < num_query,
            torch.arange(num_query + num_gallery, device=query.device) >= num_query,
        )
    return _retrieval_compute(
        *state, top_k, metrics, distance, chunk_size, memory_budget, knn_backend
    )
