"""Face-verification metrics of scored pairs: AUC, EER, TAR@FAR and LFW k-fold accuracy."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F
from torchmetrics.utilities import rank_zero_warn

from marginkit._validation import (
    check_choice,
    check_far_targets,
    check_finite_rows,
    check_issame,
    check_n_folds,
)

VERIFICATION_DISTANCES = ("cosine", "euclidean")


# The old private name, still imported by marginkit.models.
_check_far_targets = check_far_targets


def _check_verification_distance(distance: str) -> str:
    return check_choice("distance", distance, VERIFICATION_DISTANCES)


def _verification_update_scores(scores: Tensor, issame: Tensor) -> tuple[Tensor, Tensor]:
    """Validate scored pairs; return detached ``(scores, issame)`` (issame as bool)."""
    if not isinstance(scores, Tensor):
        raise TypeError(f"`scores` must be a torch.Tensor, got {type(scores).__name__}")
    if scores.ndim != 1:
        raise ValueError(f"`scores` must have shape (N,), got {tuple(scores.shape)}")
    if scores.shape[0] == 0:
        raise ValueError("`scores` is empty: shape (0,)")
    if not scores.is_floating_point():
        raise ValueError(f"`scores` must be floating point, got {scores.dtype}")
    check_finite_rows("scores", scores)
    issame = check_issame(issame, scores.shape[0], scores.device)
    return scores.detach(), issame


def _pair_scores(emb1: Tensor, emb2: Tensor, distance: str) -> Tensor:
    """Validate two (N, D) embedding batches; return their pair scores (larger = more alike)."""
    for name, embeddings in (("emb1", emb1), ("emb2", emb2)):
        if not isinstance(embeddings, Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(embeddings).__name__}")
        if embeddings.ndim != 2:
            raise ValueError(f"`{name}` must have shape (N, D), got {tuple(embeddings.shape)}")
        if not embeddings.is_floating_point():
            raise ValueError(f"`{name}` must be floating point, got {embeddings.dtype}")
    if emb1.shape != emb2.shape:
        raise ValueError(
            f"`emb1` and `emb2` must have the same shape, got {tuple(emb1.shape)} and "
            f"{tuple(emb2.shape)}"
        )
    if emb1.shape[0] == 0:
        raise ValueError(f"`emb1` is empty: shape {tuple(emb1.shape)}")
    check_finite_rows("emb1", emb1)
    check_finite_rows("emb2", emb2)
    first, second = emb1.detach().float(), emb2.detach().float()
    if distance == "cosine":
        return (F.normalize(first, dim=1) * F.normalize(second, dim=1)).sum(1)
    return -(first - second).norm(dim=1)


# --------------------------------------------------------------------------------------------
# Computation (shared by VerificationMetrics.compute and verification_metrics)
# --------------------------------------------------------------------------------------------
def _group_counts(sorted_scores: Tensor, positive: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For scores sorted in decreasing order: ``(distinct, true_accepts, false_accepts)``.

    ``true_accepts[j]`` / ``false_accepts[j]`` count the same / different pairs among the scores
    ``>= distinct[j - 1]`` (index 0 is the empty set: nothing accepted).
    """
    last_of_group = torch.cat(
        [
            (sorted_scores[1:] != sorted_scores[:-1]).nonzero().squeeze(1),
            torch.tensor([sorted_scores.numel() - 1], device=sorted_scores.device),
        ]
    )
    zero = positive.new_zeros(1)
    true_accepts = torch.cat([zero, positive.cumsum(0)[last_of_group]])
    false_accepts = torch.cat([zero, (1.0 - positive).cumsum(0)[last_of_group]])
    return sorted_scores[last_of_group], true_accepts, false_accepts


def _sort_pairs(scores: Tensor, issame: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Scores in decreasing order (float64), their same flags (float64) and the order."""
    order = torch.sort(scores.double(), descending=True, stable=True)
    return order.values, issame[order.indices].double(), order.indices


def _roc(scores: Tensor, issame: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """ROC points ``(far, tar, thresholds)`` in float64, one per distinct score plus (0, 0).

    A pair is accepted when its score is ``>= threshold``; thresholds decrease from ``+inf``, so
    FAR and TAR increase (scikit-learn's ``roc_curve(..., drop_intermediate=False)``). FAR or TAR
    is NaN when there are no different-pair or no same-pair scores.
    """
    sorted_scores, positive, _ = _sort_pairs(scores, issame)
    distinct, true_accepts, false_accepts = _group_counts(sorted_scores, positive)
    thresholds = torch.cat([distinct.new_full((1,), math.inf), distinct])
    n_same, n_different = true_accepts[-1], false_accepts[-1]
    far = false_accepts / n_different if n_different > 0 else false_accepts + math.nan
    tar = true_accepts / n_same if n_same > 0 else true_accepts + math.nan
    return far, tar, thresholds


def _equal_error_rate(far: Tensor, tar: Tensor) -> float:
    """FAR where FAR = FRR (= 1 − TAR), linearly interpolated between ROC points."""
    gap = far - (1.0 - tar)  # increases from −1 to 1 along the curve
    crossing = int((gap >= 0).nonzero()[0, 0])
    if crossing == 0 or gap[crossing] == 0:
        return float(far[crossing])
    before, after = gap[crossing - 1], gap[crossing]
    fraction = before / (before - after)
    return float(far[crossing - 1] + fraction * (far[crossing] - far[crossing - 1]))


def _best_threshold(sorted_scores: Tensor, positive: Tensor) -> float:
    """Threshold maximising the accuracy of ``score >= threshold`` ⇔ same.

    Takes scores sorted in decreasing order with their 0/1 same flags (float64). Candidates lie
    midway between consecutive distinct scores (and at ±inf); ties between candidates go to the
    highest threshold.
    """
    distinct, true_accepts, false_accepts = _group_counts(sorted_scores, positive)
    correct = true_accepts + (false_accepts[-1] - false_accepts)
    best = int(torch.argmax(correct))  # the first maximum: the highest threshold
    if best == 0:
        return math.inf
    if best == distinct.numel():
        return -math.inf
    return float((distinct[best - 1] + distinct[best]) / 2)


def _kfold_accuracy(scores: Tensor, issame: Tensor, n_folds: int) -> tuple[float, float]:
    """LFW protocol: contiguous folds; threshold from the other folds; mean and std (ddof=0)."""
    num_pairs = scores.numel()
    # Contiguous folds, the first ``num_pairs % n_folds`` one pair longer (numpy.array_split).
    sizes = torch.full((n_folds,), num_pairs // n_folds, device=scores.device)
    sizes[: num_pairs % n_folds] += 1
    fold_of = torch.repeat_interleave(torch.arange(n_folds, device=scores.device), sizes)
    sorted_scores, positive, order = _sort_pairs(scores, issame)
    sorted_fold = fold_of[order]
    accuracies = []
    for fold in range(n_folds):
        test = fold_of == fold
        n_test = int(test.sum())
        if n_test == 0 or n_test == num_pairs:
            continue
        train = sorted_fold != fold  # keeps the decreasing order: no sort per fold
        threshold = _best_threshold(sorted_scores[train], positive[train])
        predicted = scores[test].double() >= threshold
        accuracies.append(float((predicted == issame[test]).double().mean()))
    if len(accuracies) < 2:
        return math.nan, math.nan
    values = torch.tensor(accuracies, dtype=torch.float64)
    return float(values.mean()), float(values.std(unbiased=False))


def _verification_names(far_targets: tuple[float, ...]) -> list[str]:
    return ["auc", "eer", *(f"tar@far={far:g}" for far in far_targets), "accuracy", "accuracy_std"]


def _verification_compute(
    scores: Tensor, issame: Tensor, far_targets: tuple[float, ...], n_folds: int
) -> dict[str, Tensor]:
    """AUC, EER, TAR@FAR for each target and k-fold accuracy of scored pairs."""
    device = scores.device
    issame = issame.bool()
    n_same = int(issame.sum())
    results: dict[str, float] = {}
    if n_same == 0 or n_same == issame.numel():
        kind = "same" if n_same == 0 else "different"
        rank_zero_warn(
            f"VerificationMetrics: no {kind}-identity pairs among {issame.numel()}; "
            "auc, eer and tar@far are NaN"
        )
        results.update(dict.fromkeys(_verification_names(far_targets)[:-2], math.nan))
    else:
        far, tar, _ = _roc(scores, issame)
        results["auc"] = float(torch.trapezoid(tar, far))
        results["eer"] = _equal_error_rate(far, tar)
        for target in far_targets:
            # The ROC point with the largest FAR <= target (the smallest such threshold).
            point = (
                int(
                    torch.searchsorted(
                        far, torch.tensor([target], dtype=far.dtype, device=device), right=True
                    )
                )
                - 1
            )
            results[f"tar@far={target:g}"] = float(tar[point])
    results["accuracy"], results["accuracy_std"] = _kfold_accuracy(scores, issame, n_folds)
    return {
        name: torch.tensor(value, dtype=torch.float32, device=device)
        for name, value in results.items()
    }


def verification_metrics(
    scores: Tensor,
    issame: Tensor,
    far_targets: float | Sequence[float] = (1e-4, 1e-3, 1e-2),
    n_folds: int = 10,
) -> dict[str, Tensor]:
    r"""Verification metrics of scored pairs (larger score = more likely the same identity).

    With :math:`\mathrm{TAR}(t)` and :math:`\mathrm{FAR}(t)` the fractions of same and of
    different pairs whose score is :math:`\ge t`:

    - ``auc``: area under the ROC curve (trapezoids between the points of all thresholds);
    - ``eer``: the rate where :math:`\mathrm{FAR} = 1 - \mathrm{TAR}`, linearly interpolated
      between ROC points;
    - ``tar@far=<f>``: :math:`\mathrm{TAR}` at the ROC point with the largest
      :math:`\mathrm{FAR} \le f` (the smallest threshold whose FAR is within the target), one
      key per target with the rate written as ``f"{f:g}"`` (``tar@far=0.001``);
    - ``accuracy`` / ``accuracy_std``: LFW protocol, the pairs split into ``n_folds`` contiguous
      folds in their given order; for each fold the threshold that maximises accuracy on the
      other folds (midway between consecutive distinct scores) is applied to it; mean and
      population standard deviation of the fold accuracies.

    AUC, EER and TAR are NaN (with a warning) when all pairs have the same ``issame``.

    Args:
        scores: (N,) pair similarities.
        issame: (N,) bool (or 0/1) same-identity flags.
        far_targets: false-accept rates in (0, 1] at which the TAR is reported.
        n_folds: folds of the accuracy protocol (>= 2).

    Returns:
        ``{"auc", "eer", "tar@far=<f>"…, "accuracy", "accuracy_std"}`` as float32 0-d tensors.

    Example:
        >>> import torch
        >>> scores = torch.tensor([0.9, 0.8, 0.3, 0.6, 0.2, 0.1])
        >>> issame = torch.tensor([True, True, True, False, False, False])
        >>> result = verification_metrics(scores, issame, far_targets=(0.5,), n_folds=3)
        >>> sorted(result)
        ['accuracy', 'accuracy_std', 'auc', 'eer', 'tar@far=0.5']
        >>> round(float(result["auc"]), 4), round(float(result["tar@far=0.5"]), 4)
        (0.8889, 1.0)
    """
    far_targets = check_far_targets(far_targets)
    n_folds = check_n_folds(n_folds)
    scores, issame = _verification_update_scores(scores, issame)
    return _verification_compute(scores, issame, far_targets, n_folds)
