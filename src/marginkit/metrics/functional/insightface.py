"""insightface's verification protocol (``verification.evaluate``) on the pairs of a ``.bin`` set."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from marginkit._validation import check_far_targets, check_n_folds
from marginkit.metrics.functional.verification import _roc

#: The squared-distance thresholds insightface searches: ``numpy.arange(0, 4, 0.01)``.
THRESHOLDS = np.arange(0, 4, 0.01)
TARGET_METRICS = ("accuracy", "accuracy_std", "threshold", "best_accuracy")
_TARGET_NAME = re.compile(r"^val/(?P<target>[^/]+)/(?P<metric>[^/]+)$")


def is_target_metric(name: str) -> bool:
    """Whether ``name`` is a metric of a verification target, ``val/<target>/<metric>``.

    Example:
        >>> is_target_metric("val/lfw/accuracy"), is_target_metric("val/accuracy")
        (True, False)
    """
    match = _TARGET_NAME.match(name)
    return bool(match) and (
        match["metric"] in TARGET_METRICS or match["metric"].startswith("tar@far=")
    )


def resolved_far_targets(n_different: int, far_targets: Sequence[float]) -> tuple[float, ...]:
    """The FARs that ``n_different`` different-identity pairs resolve (``n · far >= 1``)."""
    return tuple(far for far in far_targets if n_different * far >= 1)


def target_verification(
    embeddings: Tensor,
    issame: Tensor,
    n_folds: int = 10,
    far_targets: Sequence[float] = (1e-4, 1e-3, 1e-2),
) -> dict[str, float]:
    r"""insightface's accuracy of a verification set: pairs of rows ``(2i, 2i + 1)``.

    The rows are L2-normalised (in float64); pair ``i`` has squared distance
    :math:`d_i = \lVert e_{2i} - e_{2i+1} \rVert^2` and is predicted "same" when
    :math:`d_i < t`. The pairs are cut into ``n_folds`` contiguous folds (scikit-learn's
    ``KFold(n_folds, shuffle=False)``); for each fold the threshold :math:`t` of the grid
    ``numpy.arange(0, 4, 0.01)`` with the highest accuracy on the other folds (the first, i.e.
    smallest, on ties) is applied to it. Embed each image and its horizontal flip and pass the
    sum (what insightface's ``test`` does) before calling this.

    Returns:
        ``accuracy`` and ``accuracy_std`` (mean and population standard deviation of the fold
        accuracies), ``threshold`` (mean of the folds' thresholds), and ``tar@far=<f>`` for
        each target FAR the number of different pairs resolves (``n_different · f >= 1``;
        the ROC point with the largest FAR ``<= f``, see
        :func:`~marginkit.metrics.functional.verification_metrics`).

    Example:
        >>> import torch
        >>> e = torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, 0.0], [0.0, 1.0]]).repeat(5, 1)
        >>> issame = torch.tensor([True, False]).repeat(5)
        >>> result = target_verification(e, issame, n_folds=5, far_targets=(0.5,))
        >>> result["accuracy"], result["tar@far=0.5"]
        (1.0, 1.0)
    """
    n_folds = check_n_folds(n_folds)
    far_targets = check_far_targets(far_targets)
    if not isinstance(embeddings, Tensor) or embeddings.ndim != 2 or embeddings.shape[0] % 2:
        raise ValueError(
            "`embeddings` must be a (2P, D) tensor (pair i is rows 2i and 2i+1), got "
            f"{tuple(getattr(embeddings, 'shape', ()))}"
        )
    issame = torch.as_tensor(issame).reshape(-1).bool().cpu()
    n_pairs = embeddings.shape[0] // 2
    if issame.numel() != n_pairs:
        raise ValueError(f"`issame` must have {n_pairs} flags (one per pair), got {issame.numel()}")
    if n_pairs < n_folds:
        raise ValueError(f"{n_pairs} pairs cannot be cut into `n_folds` = {n_folds} folds")
    unit = F.normalize(embeddings.detach().double().cpu(), dim=1)
    distance = (unit[0::2] - unit[1::2]).square().sum(1)
    thresholds = torch.from_numpy(THRESHOLDS)
    # correct[t, p]: whether threshold t classifies pair p right.
    correct = (distance[None, :] < thresholds[:, None]) == issame[None, :]
    sizes = torch.full((n_folds,), n_pairs // n_folds)
    sizes[: n_pairs % n_folds] += 1
    fold_of = torch.repeat_interleave(torch.arange(n_folds), sizes)
    per_fold = correct.double() @ F.one_hot(fold_of, n_folds).double()  # (T, folds) counts
    train_correct = per_fold.sum(1, keepdim=True) - per_fold
    best = train_correct.argmax(0)  # first maximum: the smallest threshold
    accuracies = per_fold[best, torch.arange(n_folds)] / sizes.double()
    results = {
        "accuracy": float(accuracies.mean()),
        "accuracy_std": float(accuracies.std(unbiased=False)),
        "threshold": float(thresholds[best].mean()),
    }
    n_different = int((~issame).sum())
    wanted = resolved_far_targets(n_different, far_targets)
    if wanted and n_different < n_pairs:
        far, tar, _ = _roc(-distance, issame)
        for target in wanted:
            point = int(
                torch.searchsorted(far, torch.tensor([target], dtype=far.dtype), right=True)
            )
            results[f"tar@far={target:g}"] = float(tar[point - 1])
    return results


def flip_sum(embed: object, images: Tensor) -> Tensor:
    """``embed(images) + embed(images flipped left-right)``: insightface's test-time embedding."""
    return embed(images) + embed(torch.flip(images, dims=(-1,)))  # type: ignore[operator]


__all__ = [
    "THRESHOLDS",
    "flip_sum",
    "is_target_metric",
    "resolved_far_targets",
    "target_verification",
]
