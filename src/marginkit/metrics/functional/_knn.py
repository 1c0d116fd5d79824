"""Exact nearest neighbours in bounded memory: chunked matrix products and a tie-aware top-k.

Internals of :func:`marginkit.metrics.functional.retrieval_metrics`; inputs are trusted (the
public functions validate them once).

Order: a gallery item ``a`` comes before ``b`` for a query when its score is larger, or when the
scores are equal and ``a`` has the lower gallery index. ``torch.topk`` does not promise that order
among equal scores (neither which tied items it keeps at the k-th place), so every chunk is
fixed up: rows whose k-th and (k+1)-th scores are equal are re-selected by a stable sort of the
whole row, and rows with equal scores inside the kept set are re-ordered by (−score, index).

Memory: one chunk holds ``rows × G`` scores plus ``rows × k`` neighbours, and the number of rows
is chosen so that this stays under ``memory_budget`` bytes (at least one row per chunk).
Queries are processed in increasing order of the k they need, so a few queries of a large class
(which need many neighbours) do not inflate the chunks of all the others.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

DISTANCES = ("cosine", "euclidean")
KNN_BACKENDS = ("torch", "faiss")
DEFAULT_MEMORY_BUDGET = 128 * 2**20

# Bytes of per-neighbour work space (top-k values and indices, re-ordering, relevance,
# float64 cumulative sums) counted for each kept neighbour of each query row.
_BYTES_PER_NEIGHBOUR = 64


def prepare_embeddings(embeddings: Tensor, distance: str) -> Tensor:
    """Return ``embeddings`` in the form :func:`scores` expects (unit rows for cosine).

    Half-precision inputs are computed in float32.
    """
    if embeddings.dtype in (torch.float16, torch.bfloat16):
        embeddings = embeddings.float()
    if distance == "cosine":
        return F.normalize(embeddings, dim=1)
    return embeddings


def scores(
    query: Tensor,
    gallery: Tensor,
    distance: str,
    gallery_sq_norm: Tensor | None,
    out: Tensor | None = None,
) -> Tensor:
    """Return the (Q, G) similarity scores, larger = nearer (written into ``out`` if given).

    ``cosine``: ``q · g`` of unit vectors. ``euclidean``: ``−max(‖q‖² − 2 q·g + ‖g‖², 0)``, the
    negated squared distance (same order as the distance). Reusing ``out`` across chunks saves
    the page faults of a fresh large allocation per chunk (a third of the time on CPU).
    """
    if distance == "cosine":
        return torch.mm(query, gallery.T, out=out)
    assert gallery_sq_norm is not None
    sq_dist = torch.addmm(
        gallery_sq_norm.unsqueeze(0), query, gallery.T, beta=1.0, alpha=-2.0, out=out
    )
    sq_dist += query.square().sum(1, keepdim=True)
    return sq_dist.clamp_min_(0.0).neg_()


def order_ties_by_index(values: Tensor, indices: Tensor) -> Tensor:
    """Re-order each row of ``indices`` by (−value, index); ``values`` are the rows' scores."""
    indices, by_index = indices.sort(dim=1)
    values = values.gather(1, by_index)
    by_score = values.neg().sort(dim=1, stable=True).indices
    return indices.gather(1, by_score)


def top_k_by_score_then_index(row_scores: Tensor, k: int, memory_budget: int) -> Tensor:
    """Indices of the ``k`` best columns of each row, ordered by (−score, column index).

    Exact in the presence of ties: the kept set and its order follow the tie rule.
    """
    num_columns = row_scores.shape[1]
    k = min(k, num_columns)
    if k == num_columns:
        return row_scores.neg().sort(dim=1, stable=True).indices
    values, indices = row_scores.topk(k + 1, dim=1)
    boundary_tie = values[:, k] == values[:, k - 1]
    values, indices = values[:, :k], indices[:, :k]
    if bool(boundary_tie.any()):
        # Which of the tied items are kept is arbitrary so far: redo those rows exactly.
        rows = boundary_tie.nonzero().squeeze(1)
        step = max(1, memory_budget // max(1, num_columns * 16))
        for start in range(0, len(rows), step):
            part = rows[start : start + step]
            exact = row_scores[part].neg().sort(dim=1, stable=True).indices[:, :k]
            indices[part] = exact
            values[part] = row_scores[part].gather(1, exact)
    tied = (values[:, 1:] == values[:, :-1]).any(1)
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        indices[rows] = order_ties_by_index(values[rows], indices[rows])
    return indices


def plan_chunks(
    k_sorted: list[int], num_gallery: int, itemsize: int, chunk_size: int | None, memory_budget: int
) -> Iterator[tuple[int, int]]:
    """Yield ``(start, end)`` row ranges of queries sorted by their ``k`` (ascending).

    With ``chunk_size`` the ranges have that many rows; otherwise each range holds as many rows
    as fit ``memory_budget`` bytes for ``num_gallery`` scores plus its largest k neighbours per
    row (at least one row).
    """
    num_queries = len(k_sorted)

    def row_bytes(k: int) -> int:
        return num_gallery * itemsize + (k + 1) * _BYTES_PER_NEIGHBOUR

    start = 0
    while start < num_queries:
        if chunk_size is not None:
            end = min(start + chunk_size, num_queries)
        else:
            rows = max(1, memory_budget // row_bytes(k_sorted[start]))
            end = min(start + rows, num_queries)
            fitted = max(1, memory_budget // row_bytes(k_sorted[end - 1]))
            end = min(start + fitted, end)
        yield start, end
        start = end


def exact_neighbours(
    query: Tensor,
    gallery: Tensor,
    self_position: Tensor,
    k_per_query: Tensor,
    distance: str,
    chunk_size: int | None,
    memory_budget: int,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(query_rows, neighbours)`` chunk by chunk.

    ``neighbours[i, j]`` is the gallery index of the ``j``-th nearest neighbour of query
    ``query_rows[i]``; a chunk has ``min(max k of its rows, G)`` columns. A query whose own
    gallery index is ``self_position[i] >= 0`` never retrieves itself before any other item (its
    own score is −inf; it can appear only in the last column when k = G, and callers treat it as
    not relevant).

    Inputs: prepared (see :func:`prepare_embeddings`) ``query`` (Q, D) and ``gallery`` (G, D).
    """
    num_gallery = gallery.shape[0]
    gallery_sq_norm = gallery.square().sum(1) if distance == "euclidean" else None
    order = torch.sort(k_per_query, stable=True).indices
    k_sorted = k_per_query[order].tolist()
    chunks = list(
        plan_chunks(k_sorted, num_gallery, query.element_size(), chunk_size, memory_budget)
    )
    buffer = query.new_empty(max(end - start for start, end in chunks), num_gallery)
    for start, end in chunks:
        rows = order[start:end]
        chunk_scores = scores(
            query[rows], gallery, distance, gallery_sq_norm, out=buffer[: end - start]
        )
        own = self_position[rows]
        has_self = (own >= 0).nonzero().squeeze(1)
        if has_self.numel():
            chunk_scores[has_self, own[has_self]] = float("-inf")
        yield rows, top_k_by_score_then_index(chunk_scores, k_sorted[end - 1], memory_budget)


def faiss_neighbours(
    query: Tensor,
    gallery: Tensor,
    self_position: Tensor,
    k_per_query: Tensor,
    distance: str,
    chunk_size: int | None,
    memory_budget: int,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Like :func:`exact_neighbours`, searching with faiss's exact ``IndexFlatIP``/``IndexFlatL2``.

    faiss picks among equal scores at the k-th place itself; the kept neighbours are re-ordered
    by (−score, index), so only the set at a tied k-th place may differ from the torch backend.
    """
    faiss = import_faiss()
    device = query.device
    query_np = query.detach().float().cpu().contiguous().numpy()
    gallery_np = gallery.detach().float().cpu().contiguous().numpy()
    num_gallery, dim = gallery_np.shape
    index = faiss.IndexFlatIP(dim) if distance == "cosine" else faiss.IndexFlatL2(dim)
    index.add(gallery_np)
    order = torch.sort(k_per_query.cpu(), stable=True).indices
    k_sorted = k_per_query.cpu()[order].tolist()
    self_position = self_position.cpu()
    for start, end in plan_chunks(k_sorted, num_gallery, 4, chunk_size, memory_budget):
        rows = order[start:end]
        own = self_position[rows]
        k = min(k_sorted[end - 1], num_gallery)
        search_k = min(k + int(bool((own >= 0).any())), num_gallery)
        found_scores, found = index.search(query_np[rows.numpy()], search_k)
        found_scores = torch.from_numpy(found_scores)
        found = torch.from_numpy(found).long()
        if distance == "euclidean":
            found_scores = found_scores.neg()
        # Move each query's own index to the end of its row (it is treated as not relevant).
        is_self = found == own.unsqueeze(1)
        to_end = is_self.to(torch.uint8).sort(dim=1, stable=True).indices
        found = found.gather(1, to_end)[:, :k]
        found_scores = found_scores.gather(1, to_end)[:, :k]
        found_scores[found == own.unsqueeze(1)] = float("-inf")
        neighbours = order_ties_by_index(found_scores, found)
        yield rows.to(device), neighbours.to(device)


def import_faiss() -> Any:
    """Import faiss or raise ``ModuleNotFoundError`` saying how to install it."""
    try:
        import faiss
    except ModuleNotFoundError as error:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError(
            "`knn_backend='faiss'` needs faiss: `pip install faiss-cpu` (or faiss-gpu); "
            "it is not a marginkit dependency"
        ) from error
    return faiss
