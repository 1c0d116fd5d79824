"""Brute-force references for the metrics, written for clarity (full matrices, argsort, loops)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch


def similarity_matrix(query: torch.Tensor, gallery: torch.Tensor, distance: str) -> np.ndarray:
    """The full (Q, G) score matrix in float64, larger = nearer."""
    q, g = query.double().numpy(), gallery.double().numpy()
    if distance == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
        return q @ g.T
    return -((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)


def retrieval_reference(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    is_query: torch.Tensor | None = None,
    is_gallery: torch.Tensor | None = None,
    top_k=(1, 5, 10),
    distance: str = "cosine",
) -> dict[str, float]:
    """Every metric of the issue, query by query, from a full argsort of the score matrix."""
    n = embeddings.shape[0]
    is_query = np.ones(n, bool) if is_query is None else is_query.numpy()
    is_gallery = np.ones(n, bool) if is_gallery is None else is_gallery.numpy()
    labels = labels.numpy()
    query_items, gallery_items = np.flatnonzero(is_query), np.flatnonzero(is_gallery)
    scores = similarity_matrix(embeddings[query_items], embeddings[gallery_items], distance)
    per_query: dict[str, list[float]] = {}
    without = 0
    for row, item in enumerate(query_items):
        candidates = [j for j, other in enumerate(gallery_items) if other != item]
        relevant_all = [labels[gallery_items[j]] == labels[item] for j in candidates]
        r = int(sum(relevant_all))
        if r == 0:
            without += 1
            continue
        # Sort by (−score, gallery index): lexsort's last key is the primary one.
        cand = np.array(candidates)
        order = cand[np.lexsort((cand, -scores[row, cand]))]
        rel = [labels[gallery_items[j]] == labels[item] for j in order]

        def precision_at(i: int, rel=rel) -> float:  # P(i), 1-based
            return sum(rel[:i]) / i

        def rel_at(i: int, rel=rel) -> float:  # rel(i), 1-based; beyond the gallery: a miss
            return float(rel[i - 1]) if i <= len(rel) else 0.0

        for k in top_k:
            hits = sum(rel[:k])
            per_query.setdefault(f"precision@{k}", []).append(hits / k)
            per_query.setdefault(f"cmc@{k}", []).append(float(hits > 0))
            ap = sum(precision_at(i) * rel_at(i) for i in range(1, k + 1))
            per_query.setdefault(f"map@{k}", []).append(ap / min(k, r))
        per_query.setdefault("r_precision", []).append(sum(rel[:r]) / r)
        ap_r = sum(precision_at(i) * rel_at(i) for i in range(1, r + 1))
        per_query.setdefault("map@r", []).append(ap_r / r)
    names = [f"{m}@{k}" for m in ("precision", "cmc", "map") for k in top_k]
    names += ["r_precision", "map@r"]
    result = {
        name: float(np.mean(per_query[name])) if name in per_query else math.nan for name in names
    }
    result["n_queries_without_match"] = without
    return result


def tar_at_far_reference(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """TAR of the ROC point with the largest FAR <= target (sklearn's ROC arrays)."""
    allowed = np.flatnonzero(fpr <= target)
    return float(tpr[allowed[-1]])


def kfold_accuracy_reference(scores: np.ndarray, issame: np.ndarray, n_folds: int):
    """LFW protocol with loops: thresholds midway between train scores, first best one wins."""
    n = len(scores)
    folds = np.array_split(np.arange(n), n_folds)
    accuracies = []
    for test in folds:
        train = np.setdiff1d(np.arange(n), test)
        distinct = sorted(set(scores[train].astype(np.float64).tolist()), reverse=True)
        candidates = [math.inf]
        candidates += [(a + b) / 2 for a, b in itertools.pairwise(distinct)]
        candidates += [-math.inf]
        best, best_correct = None, -1
        for threshold in candidates:
            correct = int(((scores[train] >= threshold) == issame[train]).sum())
            if correct > best_correct:
                best, best_correct = threshold, correct
        accuracies.append(float(((scores[test] >= best) == issame[test]).mean()))
    return float(np.mean(accuracies)), float(np.std(accuracies))
