"""insightface's verification protocol against a transcription of its evaluate() (sklearn KFold)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

from marginkit.metrics.functional.insightface import (
    is_target_metric,
    resolved_far_targets,
    target_verification,
)


def _accuracy(threshold, dist, actual_issame):
    predict_issame = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict_issame, actual_issame))
    tn = np.sum(np.logical_and(np.logical_not(predict_issame), np.logical_not(actual_issame)))
    return float(tp + tn) / dist.size


def insightface_evaluate(embeddings, actual_issame, nrof_folds=10):
    """insightface's verification.evaluate / calculate_roc, written out (no PCA)."""
    embeddings = normalize(embeddings)
    thresholds = np.arange(0, 4, 0.01)
    embeddings1, embeddings2 = embeddings[0::2], embeddings[1::2]
    nrof_pairs = min(len(actual_issame), embeddings1.shape[0])
    k_fold = KFold(n_splits=nrof_folds, shuffle=False)
    accuracy = np.zeros(nrof_folds)
    best = np.zeros(nrof_folds)
    dist = np.sum(np.square(np.subtract(embeddings1, embeddings2)), 1)
    indices = np.arange(nrof_pairs)
    for fold_idx, (train_set, test_set) in enumerate(k_fold.split(indices)):
        acc_train = np.zeros(len(thresholds))
        for threshold_idx, threshold in enumerate(thresholds):
            acc_train[threshold_idx] = _accuracy(
                threshold, dist[train_set], actual_issame[train_set]
            )
        best_threshold_index = np.argmax(acc_train)
        best[fold_idx] = thresholds[best_threshold_index]
        accuracy[fold_idx] = _accuracy(
            thresholds[best_threshold_index], dist[test_set], actual_issame[test_set]
        )
    return accuracy, best, dist


def _pairs(n_pairs, dim, seed, separation):
    rng = np.random.default_rng(seed)
    issame = rng.random(n_pairs) < 0.5
    first = rng.standard_normal((n_pairs, dim))
    second = np.where(
        issame[:, None],
        first + separation * rng.standard_normal((n_pairs, dim)),
        rng.standard_normal((n_pairs, dim)),
    )
    embeddings = np.empty((2 * n_pairs, dim))
    embeddings[0::2], embeddings[1::2] = first, second
    return embeddings, issame


@pytest.mark.parametrize(
    ("n_pairs", "dim", "seed", "separation"),
    [(600, 16, 0, 1.0), (605, 8, 1, 1.5), (47, 4, 2, 0.7), (1200, 32, 3, 2.0)],
)
def test_matches_the_transcription_of_insightface(n_pairs, dim, seed, separation):
    embeddings, issame = _pairs(n_pairs, dim, seed, separation)
    accuracy, thresholds, _ = insightface_evaluate(embeddings, issame)
    result = target_verification(torch.from_numpy(embeddings), torch.from_numpy(issame))
    assert abs(result["accuracy"] - accuracy.mean()) <= 1e-12
    assert abs(result["accuracy_std"] - accuracy.std()) <= 1e-12
    assert abs(result["threshold"] - thresholds.mean()) <= 1e-12
    assert 0.5 < result["accuracy"] < 1.0  # a test that could fail either way


def test_tar_at_far_brute_force_and_resolution():
    embeddings, issame = _pairs(2000, 8, 4, 1.0)
    _, _, dist = insightface_evaluate(embeddings, issame)
    result = target_verification(
        torch.from_numpy(embeddings), torch.from_numpy(issame), far_targets=(1e-4, 1e-3, 1e-2, 0.1)
    )
    n_different = int((~issame).sum())
    assert resolved_far_targets(n_different, (1e-4, 1e-3)) == (1e-3,)
    assert "tar@far=0.0001" not in result  # ~1000 different pairs cannot resolve 1e-4
    for far in (1e-3, 1e-2, 0.1):
        best_tar = 0.0
        for threshold in np.concatenate([[-1.0], np.unique(dist)]):
            accepted = dist <= threshold
            if accepted[~issame].mean() <= far:
                best_tar = max(best_tar, accepted[issame].mean())
        assert result[f"tar@far={far:g}"] == pytest.approx(best_tar, abs=1e-12)


def test_flip_sum_then_protocol_is_insightfaces_test():
    embeddings, issame = _pairs(100, 8, 5, 1.0)
    flipped = embeddings + 0.3 * np.random.default_rng(6).standard_normal(embeddings.shape)
    accuracy, _, _ = insightface_evaluate(embeddings + flipped, issame)
    result = target_verification(torch.from_numpy(embeddings + flipped), torch.from_numpy(issame))
    assert abs(result["accuracy"] - accuracy.mean()) <= 1e-12


def test_bad_inputs():
    with pytest.raises(ValueError, match="2P"):
        target_verification(torch.zeros(3, 2), torch.zeros(1, dtype=torch.bool))
    with pytest.raises(ValueError, match="issame"):
        target_verification(torch.zeros(40, 2), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="n_folds"):
        target_verification(torch.zeros(8, 2), torch.zeros(4, dtype=torch.bool))
    assert is_target_metric("val/cfp_fp/tar@far=0.001") and not is_target_metric("val/lfw/x")
