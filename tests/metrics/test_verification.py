"""VerificationMetrics / verification_metrics against scikit-learn and loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.interpolate import interp1d
from scipy.optimize import brentq
from sklearn.metrics import roc_auc_score, roc_curve

from marginkit.metrics import VerificationMetrics
from marginkit.metrics.functional import verification_metrics
from tests.helpers.run_if import requires_matplotlib
from tests.metrics._reference import kfold_accuracy_reference, tar_at_far_reference

FAR_TARGETS = (1e-3, 1e-2, 0.05, 0.1, 0.5)


def _pairs(n: int, ties: bool = False, dtype=torch.float32):
    issame = torch.rand(n) < 0.4
    scores = torch.randn(n, dtype=dtype) + 1.2 * issame.to(dtype)
    if ties:
        scores = (scores * 4).round() / 4  # few distinct scores: many ties at every threshold
    return scores, issame


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n", [50, 997])
def test_auc_and_tar_match_sklearn(n, ties):
    scores, issame = _pairs(n, ties)
    result = verification_metrics(scores, issame, far_targets=FAR_TARGETS)
    y, s = issame.numpy(), scores.double().numpy()
    assert float(result["auc"]) == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    for target in FAR_TARGETS:
        expected = tar_at_far_reference(fpr, tpr, target)
        assert float(result[f"tar@far={target:g}"]) == pytest.approx(expected, abs=1e-6), target


@pytest.mark.parametrize("ties", [False, True])
def test_eer_matches_the_interpolated_crossing(ties):
    scores, issame = _pairs(400, ties)
    fpr, tpr, _ = roc_curve(issame.numpy(), scores.double().numpy(), drop_intermediate=False)
    # facenet / insightface: the FAR x where 1 − x = TAR(x) on the linearly interpolated ROC.
    expected = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)
    result = verification_metrics(scores, issame)
    assert float(result["eer"]) == pytest.approx(expected, abs=1e-6)


def test_tar_at_an_exact_far_point():
    # 1,000 different pairs: FAR takes the value 1e-3 exactly at the top different score.
    different = torch.linspace(-1, 0.5, 1000)
    same = torch.tensor([0.9, 0.6, 0.55, 0.4, 0.2])
    scores = torch.cat([same, different])
    issame = torch.cat([torch.ones(5, dtype=torch.bool), torch.zeros(1000, dtype=torch.bool)])
    result = verification_metrics(scores, issame, far_targets=(1e-4, 1e-3, 2e-3))
    assert float(result["tar@far=0.0001"]) == pytest.approx(3 / 5)  # above every different pair
    assert float(result["tar@far=0.001"]) == pytest.approx(3 / 5)  # 0.5 accepted: TAR unchanged
    assert float(result["tar@far=0.002"]) == pytest.approx(3 / 5)
    perfect = verification_metrics(
        torch.tensor([0.9, 0.1, 0.8, 0.2]), torch.tensor([1, 0, 1, 0]), n_folds=2
    )
    assert float(perfect["auc"]) == 1.0 and float(perfect["eer"]) == 0.0
    assert float(perfect["accuracy"]) == 1.0


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n_folds", [2, 10])
def test_kfold_accuracy_matches_loop_reference(ties, n_folds):
    scores, issame = _pairs(203, ties)
    result = verification_metrics(scores, issame, n_folds=n_folds)
    mean, std = kfold_accuracy_reference(scores.numpy(), issame.numpy(), n_folds)
    assert float(result["accuracy"]) == pytest.approx(mean, abs=1e-6)
    assert float(result["accuracy_std"]) == pytest.approx(std, abs=1e-6)


def test_keys_are_what_the_training_module_logs():
    metric = VerificationMetrics()
    metric.update_scores(*_pairs(300))
    assert list(metric.compute()) == [
        "auc",
        "eer",
        "tar@far=0.0001",
        "tar@far=0.001",
        "tar@far=0.01",
        "accuracy",
        "accuracy_std",
    ]
    assert metric.names == list(metric.compute())


def test_embedding_pairs_are_scored_by_cosine():
    emb1, emb2 = torch.randn(120, 6), torch.randn(120, 6)
    issame = torch.rand(120) < 0.5
    metric = VerificationMetrics()
    metric.update(emb1, emb2, issame)
    scores = torch.nn.functional.cosine_similarity(emb1, emb2)
    expected = verification_metrics(scores, issame)
    for name, value in metric.compute().items():
        assert float(value) == pytest.approx(float(expected[name]), abs=1e-6), name
    euclidean = VerificationMetrics(distance="euclidean")
    euclidean.update(emb1, emb2, issame.long())
    expected = verification_metrics(-(emb1 - emb2).norm(dim=1), issame)
    assert float(euclidean.compute()["auc"]) == pytest.approx(float(expected["auc"]), abs=1e-6)


def test_many_updates_equal_one():
    scores, issame = _pairs(500, ties=True)
    one = VerificationMetrics(far_targets=FAR_TARGETS)
    one.update_scores(scores, issame)
    many = VerificationMetrics(far_targets=FAR_TARGETS)
    for start in range(0, 500, 64):
        many.update_scores(scores[start : start + 64], issame[start : start + 64])
    expected, got = one.compute(), many.compute()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_a_quarter_million_pairs_with_update_scores():
    # What the training module does on the digits eval split: every pair i < j, cosine scores.
    embeddings = torch.nn.functional.normalize(torch.randn(710, 16), dim=1)
    labels = torch.randint(0, 4, (710,))
    first, second = torch.triu_indices(710, 710, offset=1)
    metric = VerificationMetrics()
    metric.update_scores(
        (embeddings[first] * embeddings[second]).sum(1), labels[first] == labels[second]
    )
    result = metric.compute()
    assert first.numel() > 250_000
    assert 0.4 < float(result["auc"]) < 0.6  # random embeddings


def test_one_kind_of_pair_gives_nan_with_a_warning():
    with pytest.warns(UserWarning, match="no different-identity pairs"):
        result = verification_metrics(torch.rand(20), torch.ones(20, dtype=torch.bool))
    assert math.isnan(float(result["auc"])) and math.isnan(float(result["tar@far=0.001"]))
    assert float(result["accuracy"]) == 1.0


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda m: m.update_scores(torch.zeros(0), torch.zeros(0, dtype=torch.bool)),
            "`scores` is empty",
        ),
        (
            lambda m: m.update_scores(torch.rand(3, 1), torch.zeros(3, dtype=torch.bool)),
            "`scores` must have shape",
        ),
        (
            lambda m: m.update_scores(torch.rand(3), torch.zeros(4, dtype=torch.bool)),
            r"`issame` must have shape \(3,\)",
        ),
        (
            lambda m: m.update_scores(
                torch.tensor([0.1, float("nan")]), torch.zeros(2, dtype=torch.bool)
            ),
            "`scores` must be finite, got nan at row 1",
        ),
        (
            lambda m: m.update_scores(torch.rand(3), torch.tensor([0, 2, 1])),
            "`issame` must be 0 or 1, got 2 at row 1",
        ),
        (lambda m: m.update_scores(torch.rand(3), torch.rand(3)), "`issame` must be a bool or 0/1"),
        (
            lambda m: m.update_scores(torch.arange(3), torch.zeros(3, dtype=torch.bool)),
            "`scores` must be floating point",
        ),
        (
            lambda m: m.update(
                torch.randn(3, 4), torch.randn(3, 5), torch.zeros(3, dtype=torch.bool)
            ),
            "`emb1` and `emb2` must have the same shape",
        ),
        (
            lambda m: m.update(
                torch.randn(2, 4),
                torch.full((2, 4), float("inf")),
                torch.zeros(2, dtype=torch.bool),
            ),
            "`emb2` must be finite, got inf at row 0",
        ),
        (
            lambda m: m.update(
                torch.randn(0, 4), torch.randn(0, 4), torch.zeros(0, dtype=torch.bool)
            ),
            "`emb1` is empty",
        ),
        (
            lambda m: m.update(
                torch.randn(3, 4), torch.randn(3, 4), torch.zeros(2, dtype=torch.bool)
            ),
            r"`issame` must have shape \(3,\)",
        ),
        (
            lambda m: m.update(torch.randn(3, 4), None, torch.zeros(3, dtype=torch.bool)),
            "give `emb1` and `emb2`, or `scores`",
        ),
    ],
)
def test_malformed_updates_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call(VerificationMetrics())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"far_targets": (1e-3, 0.0)}, r"`far_targets` must hold rates in \(0, 1\], got 0.0"),
        ({"far_targets": (2.0,)}, "`far_targets` must hold rates"),
        ({"far_targets": ()}, "`far_targets` must hold at least one"),
        ({"n_folds": 1}, "`n_folds` must be an int >= 2, got 1"),
        ({"distance": "dot"}, "`distance` must be one of"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VerificationMetrics(**kwargs)


def test_compute_without_pairs_raises():
    with (
        pytest.raises(ValueError, match="call `update` before `compute`"),
        pytest.warns(UserWarning),
    ):
        VerificationMetrics().compute()


@requires_matplotlib
def test_plot_draws_the_roc_on_a_log_far_axis():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores, issame = _pairs(300, ties=True)
    metric = VerificationMetrics()
    metric.update_scores(scores, issame)
    fig, ax = metric.plot()
    fpr, _, _ = roc_curve(issame.numpy(), scores.double().numpy(), drop_intermediate=False)
    curve = ax.get_lines()[0]
    assert len(curve.get_xdata()) == int((fpr > 0).sum())
    assert np.all(np.diff(curve.get_xdata()) >= 0)
    assert ax.get_xscale() == "log"
    plt.close(fig)


def test_direction_of_every_result_is_the_metrics_own():
    """EER and the fold std are better when smaller: no single higher_is_better for the class."""
    from marginkit.metrics import VerificationMetrics
    from marginkit.models import metric_mode

    metric = VerificationMetrics(far_targets=(1e-3, 0.1), n_folds=3)
    assert metric.higher_is_better is None
    assert metric.higher_is_better_by_name == {
        "auc": True, "eer": False, "tar@far=0.001": True, "tar@far=0.1": True,
        "accuracy": True, "accuracy_std": False,
    }  # fmt: skip
    for name, better in metric.higher_is_better_by_name.items():
        assert metric_mode(f"val/{name}") == ("max" if better else "min")
