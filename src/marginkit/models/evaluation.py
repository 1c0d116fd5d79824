"""Evaluation of embeddings: retrieval over a split, verification on its pair list, raw baseline.

One place for what the training module (``validation`` / ``test``), ``eval.py`` and the raw-input
baseline compute, so the numbers agree:

- :func:`evaluate_embeddings`: leave-one-out retrieval over all items of a split
  (``precision@k``, ``cmc@k``, ``map@k``, ``r_precision``, ``map@r``) and, given a pair list,
  verification on exactly those pairs (``auc``, ``eer``, ``tar@far=…``, ``accuracy``), scored
  by cosine similarity, with the folds the pair list's protocol defines.
- :func:`gather_and_deduplicate`: under DDP, every rank's items gathered, the duplicates that
  :class:`~torch.utils.data.DistributedSampler` pads with dropped by dataset index, and the
  items put in dataset order, so the metrics do not depend on the world size, the batch size
  or the order of the batches.
- :func:`baseline_metrics`: the same metrics on the raw (flattened) inputs of the split: what
  a model must beat to have learned something.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F

from marginkit.metrics.functional.retrieval import _check_top_k, _result_names, retrieval_metrics
from marginkit.metrics.functional.verification import (
    _check_far_targets,
    _verification_names,
    verification_metrics,
)

DEFAULT_TOP_K = (1, 5, 10)
DEFAULT_FAR_TARGETS = (1e-4, 1e-3, 1e-2)


class EvaluationItems(NamedTuple):
    """The evaluated items of a split: embeddings, labels and dataset indices, in index order."""

    embeddings: Tensor
    labels: Tensor
    indices: Tensor | None


def metric_names(
    top_k: Sequence[int] = DEFAULT_TOP_K,
    far_targets: Sequence[float] = DEFAULT_FAR_TARGETS,
    verification: bool = True,
) -> list[str]:
    """Keys of :func:`evaluate_embeddings`'s result (retrieval, then verification).

    Example:
        >>> metric_names(top_k=(1,), far_targets=(0.01,))
        ['precision@1', 'cmc@1', 'map@1', 'r_precision', 'map@r', 'n_queries_without_match', 'auc', 'eer', 'tar@far=0.01', 'accuracy', 'accuracy_std']
    """
    names = _result_names(_check_top_k(top_k), ("precision", "cmc", "map", "r_precision", "map@r"))
    if verification:
        names += _verification_names(_check_far_targets(far_targets))
    return names


def _pair_attributes(pairs: Any) -> tuple[Tensor, Tensor, Tensor, int]:
    try:
        first, second, issame = pairs.first, pairs.second, pairs.issame
    except AttributeError as error:
        raise TypeError(
            "`pairs` must have `first`, `second`, `issame` (and `n_folds`), like "
            f"marginkit.data.VerificationPairs, got {type(pairs).__name__}"
        ) from error
    first, second = (torch.as_tensor(side, dtype=torch.long) for side in (first, second))
    issame = torch.as_tensor(issame).bool()
    if not first.shape == second.shape == issame.shape or first.ndim != 1:
        raise ValueError(
            "`pairs.first`, `pairs.second` and `pairs.issame` must be 1-D of one length, got "
            f"{tuple(first.shape)}, {tuple(second.shape)}, {tuple(issame.shape)}"
        )
    n_folds = int(getattr(pairs, "n_folds", 10) or 10)
    return first, second, issame, n_folds


def pair_scores(
    embeddings: Tensor, pairs: Any, indices: Tensor | None = None
) -> tuple[Tensor, Tensor, int]:
    """Cosine similarity of every pair of the list ``pairs`` (dataset indices).

    ``embeddings[i]`` is the item with dataset index ``indices[i]`` (``i`` itself without
    ``indices``). Pairs whose items are not all among the embeddings (a partial evaluation:
    ``limit_val_batches``, the sanity check) are left out.

    Returns:
        ``(scores, issame, n_folds)`` of the pairs kept, in the list's order.

    Example:
        >>> from types import SimpleNamespace
        >>> pairs = SimpleNamespace(first=[0, 0], second=[1, 2], issame=[True, False], n_folds=2)
        >>> scores, issame, n_folds = pair_scores(torch.eye(3)[[0, 0, 1]], pairs)
        >>> scores.tolist(), issame.tolist(), n_folds
        ([1.0, 0.0], [True, False], 2)
    """
    first, second, issame, n_folds = _pair_attributes(pairs)
    device = embeddings.device
    first, second, issame = first.to(device), second.to(device), issame.to(device)
    if indices is None:
        size = embeddings.shape[0]
        position = torch.arange(size, device=device)
    else:
        size = int(indices.max()) + 1 if indices.numel() else 0
        position = torch.full((size,), -1, dtype=torch.long, device=device)
        position[indices.to(device)] = torch.arange(indices.numel(), device=device)
    if first.numel() and (int(first.min()) < 0 or int(second.min()) < 0):
        raise ValueError("`pairs` must hold non-negative dataset indices")
    inside = (first < size) & (second < size)
    first_pos = torch.full_like(first, -1)
    second_pos = torch.full_like(second, -1)
    first_pos[inside] = position[first[inside]]
    second_pos[inside] = position[second[inside]]
    kept = (first_pos >= 0) & (second_pos >= 0)
    unit = F.normalize(embeddings.double(), dim=1)
    scores = (unit[first_pos[kept]] * unit[second_pos[kept]]).sum(1)
    return scores, issame[kept], n_folds


def evaluate_embeddings(
    embeddings: Tensor,
    labels: Tensor,
    pairs: Any = None,
    top_k: Sequence[int] = DEFAULT_TOP_K,
    far_targets: Sequence[float] = DEFAULT_FAR_TARGETS,
    indices: Tensor | None = None,
) -> dict[str, float]:
    r"""Retrieval over all the items and verification on the pair list, as plain floats.

    Retrieval is leave-one-out: every item queries all the others by cosine similarity
    (:func:`~marginkit.metrics.functional.retrieval_metrics`). Verification scores exactly the
    pairs of ``pairs`` by the cosine of their two embeddings and reports
    :func:`~marginkit.metrics.functional.verification_metrics` with ``pairs.n_folds`` contiguous
    folds in the list's order (the LFW protocol); the result does not depend on how the items
    were batched. Without ``pairs``, only the retrieval metrics.

    Args:
        embeddings: (N, D) embeddings of a split.
        labels: (N,) integer labels.
        pairs: a pair list with ``first``, ``second`` (dataset indices), ``issame`` and
            ``n_folds`` (:class:`marginkit.data.VerificationPairs`), or None.
        top_k: the k of ``precision@k``, ``cmc@k``, ``map@k``.
        far_targets: false-accept rates of ``tar@far``.
        indices: (N,) dataset index of each row (None: row ``i`` is item ``i``).

    Returns:
        ``{"precision@1": …, …, "auc": …, "accuracy": …}`` (floats; NaN where undefined).

    Example:
        >>> from types import SimpleNamespace
        >>> embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> labels = torch.tensor([0, 0, 1, 1])
        >>> pairs = SimpleNamespace(first=[0, 2, 0, 1], second=[1, 3, 2, 3],
        ...                         issame=[True, True, False, False], n_folds=2)
        >>> result = evaluate_embeddings(embeddings, labels, pairs, top_k=(1,), far_targets=(0.5,))
        >>> result["precision@1"], result["map@r"], result["auc"]
        (1.0, 1.0, 1.0)
    """
    top_k = _check_top_k(top_k)
    far_targets = _check_far_targets(far_targets)
    results = {
        name: float(value)
        for name, value in retrieval_metrics(embeddings, labels, top_k=top_k).items()
    }
    if pairs is not None:
        scores, issame, n_folds = pair_scores(embeddings, pairs, indices)
        if scores.numel() < 2:
            results.update(dict.fromkeys(_verification_names(far_targets), math.nan))
        else:
            n_folds = max(2, min(n_folds, scores.numel()))
            verification = verification_metrics(scores, issame, far_targets, n_folds)
            results.update({name: float(value) for name, value in verification.items()})
    return results


def deduplicate_by_index(embeddings: Tensor, labels: Tensor, indices: Tensor) -> EvaluationItems:
    """Keep one row per dataset index (its first occurrence), sorted by index.

    ``DistributedSampler`` pads an evaluation split so that every rank gets as many items: the
    padded items are copies of the first ones, which a leave-one-out retrieval would find as
    perfect matches. Dropping rows by index removes them.

    Example:
        >>> items = deduplicate_by_index(
        ...     torch.tensor([[2.0], [0.0], [1.0], [0.0]]), torch.tensor([7, 5, 6, 5]),
        ...     torch.tensor([2, 0, 1, 0]))
        >>> items.embeddings.flatten().tolist(), items.labels.tolist(), items.indices.tolist()
        ([0.0, 1.0, 2.0], [5, 6, 7], [0, 1, 2])
    """
    order = torch.argsort(indices, stable=True)
    sorted_indices = indices[order]
    first = torch.ones_like(sorted_indices, dtype=torch.bool)
    first[1:] = sorted_indices[1:] != sorted_indices[:-1]
    keep = order[first]
    return EvaluationItems(embeddings[keep], labels[keep], indices[keep])


def gather_and_deduplicate(
    embeddings: Tensor, labels: Tensor, indices: Tensor | None
) -> EvaluationItems:
    """Every rank's evaluation items, without padded duplicates, in dataset order.

    Without an initialised ``torch.distributed`` process group this is
    :func:`deduplicate_by_index` on the local items. Ranks may hold different numbers of items.
    Without ``indices`` (a datamodule whose evaluation batches carry no dataset index), the
    items are concatenated in rank order and duplicates cannot be detected.

    Example:
        >>> items = gather_and_deduplicate(torch.zeros(2, 3), torch.tensor([1, 0]), torch.tensor([1, 0]))
        >>> items.labels.tolist()
        [0, 1]
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from torchmetrics.utilities.distributed import gather_all_tensors

        if torch.distributed.get_world_size() > 1:
            embeddings = torch.cat(gather_all_tensors(embeddings.contiguous()))
            labels = torch.cat(gather_all_tensors(labels.contiguous()))
            if indices is not None:
                indices = torch.cat(gather_all_tensors(indices.contiguous()))
    if indices is None:
        return EvaluationItems(embeddings, labels, None)
    return deduplicate_by_index(embeddings, labels, indices)


def baseline_metrics(
    datamodule: Any,
    stage: str,
    labels: Tensor,
    indices: Tensor | None,
    top_k: Sequence[int] = DEFAULT_TOP_K,
    far_targets: Sequence[float] = DEFAULT_FAR_TARGETS,
) -> dict[str, float] | None:
    """The metrics of the raw inputs of split ``stage`` (``"val"`` / ``"test"``), flattened.

    The inputs come from ``datamodule.baseline_features(stage)`` (the split's inputs in dataset
    order, as the model sees them, e.g. standardised pixels); the rows evaluated are those of
    ``indices`` (the items the model was evaluated on) with their ``labels``, and the pair list
    is ``datamodule.verification_pairs(stage)``. None when the datamodule offers no features.

    Example:
        >>> from types import SimpleNamespace
        >>> features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> dm = SimpleNamespace(baseline_features=lambda stage: features,
        ...                      verification_pairs=lambda stage: None)
        >>> baseline_metrics(dm, "test", torch.tensor([0, 0, 1, 1]), None, top_k=(1,))["precision@1"]
        1.0
    """
    features_of = getattr(datamodule, "baseline_features", None)
    features = features_of(stage) if callable(features_of) else None
    if features is None:
        return None
    features = torch.as_tensor(features).flatten(1).float()
    if indices is not None:
        features = features[indices.cpu()]
    if features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"`baseline_features({stage!r})` has {features.shape[0]} rows, the evaluated split "
            f"{labels.shape[0]} items"
        )
    pairs_of = getattr(datamodule, "verification_pairs", None)
    pairs = pairs_of(stage) if callable(pairs_of) else None
    return evaluate_embeddings(
        features,
        labels.cpu(),
        pairs,
        top_k,
        far_targets,
        None if indices is None else indices.cpu(),
    )
