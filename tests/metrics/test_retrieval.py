"""RetrievalMetrics / retrieval_metrics against the brute-force reference in ``_reference.py``."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from marginkit.metrics import RetrievalMetrics
from marginkit.metrics.functional import retrieval_metrics
from tests.helpers.run_if import requires_faiss, requires_matplotlib
from tests.metrics._reference import retrieval_reference

TOP_K = (1, 2, 5, 10)


def _assert_matches(result: dict[str, torch.Tensor], expected: dict[str, float]) -> None:
    assert list(result) == list(expected)
    for name, value in expected.items():
        got = float(result[name])
        if math.isnan(value):
            assert math.isnan(got), name
        else:
            assert got == pytest.approx(value, abs=1e-6), name


def _continuous(n: int, dim: int, classes: int, dtype=torch.float64):
    """Random embeddings (no ties in float64) with some classes of a single item."""
    embeddings = torch.randn(n, dim, dtype=dtype)
    labels = torch.randint(0, classes, (n,))
    labels[:5] = torch.arange(1000, 1005)  # five singleton classes: R = 0
    return embeddings, labels


def _tied(n: int, distance: str, dtype=torch.float32):
    """Embeddings drawn from a handful of vectors whose scores are exact in floating point.

    cosine: rows of ±0.5 in 4-D (unit norm, products ±0.25); euclidean: small integers.
    Many exact ties at every rank, including at the k-th place.
    """
    if distance == "cosine":
        prototypes = torch.tensor(
            [
                [0.5, 0.5, 0.5, 0.5],
                [0.5, -0.5, 0.5, 0.5],
                [-0.5, 0.5, -0.5, 0.5],
                [0.5, 0.5, -0.5, -0.5],
                [-0.5, -0.5, -0.5, 0.5],
            ],
            dtype=dtype,
        )
    else:
        prototypes = torch.randint(-2, 3, (6, 3)).to(dtype)
    embeddings = prototypes[torch.randint(0, len(prototypes), (n,))]
    labels = torch.randint(0, 7, (n,))
    labels[-1] = 99  # a class of one item
    return embeddings, labels


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("chunk_size", [None, 1, 7])
def test_leave_one_out_matches_reference(distance, chunk_size):
    embeddings, labels = _continuous(120, 6, 9)
    result = retrieval_metrics(
        embeddings, labels, top_k=TOP_K, distance=distance, chunk_size=chunk_size
    )
    expected = retrieval_reference(embeddings, labels, top_k=TOP_K, distance=distance)
    _assert_matches(result, expected)
    assert int(result["n_queries_without_match"]) == 5


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_ties_break_by_lower_gallery_index(distance, dtype, chunk_size):
    embeddings, labels = _tied(150, distance, dtype)
    result = retrieval_metrics(
        embeddings, labels, top_k=TOP_K, distance=distance, chunk_size=chunk_size
    )
    expected = retrieval_reference(embeddings, labels, top_k=TOP_K, distance=distance)
    _assert_matches(result, expected)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("kind", ["tied", "continuous"])
def test_small_k_against_a_large_gallery_matches_reference(distance, kind):
    # Few neighbours among many items: ties at the k-th place are frequent in the tied data.
    if kind == "tied":
        embeddings, labels = _tied(700, distance)
    else:
        embeddings, labels = _continuous(700, 6, 40)
    top_k = (1, 3)
    result = retrieval_metrics(
        embeddings, labels, top_k=top_k, metrics=["precision", "cmc", "map"], distance=distance
    )
    expected = retrieval_reference(embeddings, labels, top_k=top_k, distance=distance)
    expected = {k: v for k, v in expected.items() if k not in ("r_precision", "map@r")}
    _assert_matches(result, expected)


def test_tie_rule_on_a_tiny_example():
    # Query 0 has three identical neighbours (items 1, 2, 3); only item 3 shares its label.
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    result = retrieval_metrics(embeddings, labels, top_k=(1, 2, 3))
    # Query 0 ranks 1, 2, 3 → rel 0, 0, 1; query 3 ranks 0, 1, 2 → rel 1, 0, 0;
    # query 1 ranks 0, 2, 3 → 0, 1, 0; query 2 ranks 0, 1, 3 → 0, 1, 0.
    assert float(result["precision@1"]) == pytest.approx(1 / 4)
    assert float(result["cmc@2"]) == pytest.approx(3 / 4)
    assert float(result["map@3"]) == pytest.approx((1 / 3 + 1 + 1 / 2 + 1 / 2) / 4)


def test_query_gallery_mode_matches_reference():
    embeddings, labels = _continuous(140, 5, 8)
    is_query = torch.rand(140) < 0.5
    is_gallery = torch.rand(140) < 0.7  # some items are both, some neither
    metric = RetrievalMetrics(top_k=TOP_K)
    metric.update(embeddings, labels, is_query=is_query, is_gallery=is_gallery)
    expected = retrieval_reference(embeddings, labels, is_query, is_gallery, top_k=TOP_K)
    _assert_matches(metric.compute(), expected)


def test_functional_query_gallery_keeps_sets_apart():
    query, query_labels = _continuous(40, 4, 5)
    gallery, gallery_labels = _continuous(60, 4, 5)
    result = retrieval_metrics(query, query_labels, gallery, gallery_labels, top_k=TOP_K)
    both = torch.cat([query, gallery])
    flags = torch.arange(100) < 40
    expected = retrieval_reference(
        both, torch.cat([query_labels, gallery_labels]), flags, ~flags, top_k=TOP_K
    )
    _assert_matches(result, expected)


def test_an_identical_copy_in_the_gallery_is_retrieved():
    # Query/gallery mode with distinct items: an exact copy is the nearest neighbour.
    gallery = torch.randn(30, 8)
    labels = torch.arange(30)
    result = retrieval_metrics(gallery.clone(), labels, gallery, labels, top_k=(1,))
    assert float(result["precision@1"]) == 1.0


def test_many_updates_equal_one():
    embeddings, labels = _tied(130, "cosine")
    flags = torch.rand(130) < 0.6
    one = RetrievalMetrics(top_k=TOP_K)
    one.update(embeddings, labels, is_query=flags)
    many = RetrievalMetrics(top_k=TOP_K)
    for start in range(0, 130, 17):
        part = slice(start, start + 17)
        many.update(embeddings[part], labels[part], is_query=flags[part])
    expected, got = one.compute(), many.compute()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 40),
    classes=st.integers(1, 6),
    k=st.integers(1, 45),
    chunk_size=st.one_of(st.none(), st.integers(1, 50)),
    memory_budget=st.integers(1, 4096),
    seed=st.integers(0, 2**16),
)
def test_chunking_never_changes_the_result(n, classes, k, chunk_size, memory_budget, seed):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randint(-1, 2, (n, 3), generator=generator).float()
    labels = torch.randint(0, classes, (n,), generator=generator)
    top_k = (1, k)
    got = retrieval_metrics(
        embeddings,
        labels,
        top_k=top_k,
        distance="euclidean",
        chunk_size=chunk_size,
        memory_budget=memory_budget,
    )
    expected = retrieval_reference(embeddings, labels, top_k=top_k, distance="euclidean")
    _assert_matches(got, expected)


def test_k_larger_than_the_gallery_counts_misses():
    embeddings = torch.randn(4, 3)
    labels = torch.tensor([0, 0, 0, 0])
    result = retrieval_metrics(embeddings, labels, top_k=(3, 10))
    assert float(result["precision@3"]) == 1.0
    assert float(result["precision@10"]) == pytest.approx(3 / 10)
    assert float(result["map@10"]) == 1.0 and float(result["map@r"]) == 1.0


def test_no_query_with_a_match_gives_nan_and_counts_them():
    result = retrieval_metrics(torch.randn(5, 3), torch.arange(5), top_k=(1,))
    assert int(result["n_queries_without_match"]) == 5
    assert math.isnan(float(result["precision@1"])) and math.isnan(float(result["map@r"]))


def test_metric_subsets_and_keys():
    metric = RetrievalMetrics(top_k=(5, 1), metrics=["cmc", "map@r"])
    metric.update(torch.randn(20, 4), torch.randint(0, 3, (20,)))
    result = metric.compute()
    assert list(result) == ["cmc@1", "cmc@5", "map@r", "n_queries_without_match"]
    assert list(result) == metric.names
    assert result["n_queries_without_match"].dtype == torch.long
    assert all(
        v.dtype == torch.float32 for k, v in result.items() if k != "n_queries_without_match"
    )


def test_default_keys_for_the_training_module():
    metric = RetrievalMetrics(top_k=(1, 5, 10))
    metric.update(torch.randn(30, 4), torch.randint(0, 3, (30,)))
    names = [f"{m}@{k}" for m in ("precision", "cmc", "map") for k in (1, 5, 10)]
    assert list(metric.compute()) == [*names, "r_precision", "map@r", "n_queries_without_match"]


def test_half_precision_inputs_and_reset():
    embeddings, labels = _continuous(60, 4, 4, dtype=torch.float32)
    metric = RetrievalMetrics(top_k=(1,))
    metric.update(embeddings.bfloat16(), labels)
    assert 0 <= float(metric.compute()["precision@1"]) <= 1
    metric.reset()
    with (
        pytest.raises(ValueError, match="call `update` before `compute`"),
        pytest.warns(UserWarning, match="before the ``update``"),
    ):
        metric.compute()


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda m: m.update(torch.randn(0, 4), torch.zeros(0, dtype=torch.long)),
            "`embeddings` is empty",
        ),
        (
            lambda m: m.update(torch.randn(4), torch.zeros(4, dtype=torch.long)),
            "`embeddings` must have shape",
        ),
        (
            lambda m: m.update(torch.randn(4, 3), torch.zeros(5, dtype=torch.long)),
            r"`labels` must have shape \(4,\)",
        ),
        (
            lambda m: m.update(torch.randn(4, 3), torch.zeros(4)),
            "`labels` must be an integer tensor",
        ),
        (
            lambda m: m.update(
                torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]), torch.zeros(2, dtype=torch.long)
            ),
            "`embeddings` must be finite, got nan at row 1",
        ),
        (
            lambda m: m.update(
                torch.tensor([[0.0, float("inf")]]), torch.zeros(1, dtype=torch.long)
            ),
            "`embeddings` must be finite, got inf at row 0",
        ),
        (
            lambda m: m.update(torch.randint(0, 3, (4, 3)), torch.zeros(4, dtype=torch.long)),
            "`embeddings` must be floating point",
        ),
        (
            lambda m: m.update(
                torch.randn(4, 3),
                torch.zeros(4, dtype=torch.long),
                is_query=torch.ones(3, dtype=torch.bool),
            ),
            r"`is_query` must have shape \(4,\)",
        ),
        (
            lambda m: m.update(
                torch.randn(4, 3), torch.zeros(4, dtype=torch.long), is_gallery=torch.ones(4)
            ),
            "`is_gallery` must be a bool tensor",
        ),
    ],
)
def test_malformed_updates_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call(RetrievalMetrics())


def test_feature_dimension_must_stay_the_same():
    metric = RetrievalMetrics()
    metric.update(torch.randn(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="`embeddings` must have 4 features"):
        metric.update(torch.randn(3, 5), torch.zeros(3, dtype=torch.long))


def test_no_query_or_no_gallery_raises():
    metric = RetrievalMetrics()
    metric.update(
        torch.randn(3, 4),
        torch.zeros(3, dtype=torch.long),
        is_query=torch.zeros(3, dtype=torch.bool),
    )
    with pytest.raises(ValueError, match="no item is a query"):
        metric.compute()
    metric = RetrievalMetrics()
    metric.update(
        torch.randn(3, 4),
        torch.zeros(3, dtype=torch.long),
        is_gallery=torch.zeros(3, dtype=torch.bool),
    )
    with pytest.raises(ValueError, match="the gallery is empty"):
        metric.compute()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"top_k": 0}, "`top_k` must hold positive ints, got 0"),
        ({"top_k": (1, -5)}, "`top_k` must hold positive ints, got -5"),
        ({"top_k": ()}, "`top_k` must hold at least one k"),
        ({"top_k": (1.5,)}, "`top_k` must hold positive ints"),
        ({"metrics": ["precision", "ndcg"]}, "`metrics` must hold names from .* got 'ndcg'"),
        ({"metrics": []}, "`metrics` must name at least one"),
        ({"distance": "manhattan"}, "`distance` must be one of"),
        ({"chunk_size": 0}, "`chunk_size` must be a positive int or None, got 0"),
        ({"memory_budget": -1}, "`memory_budget` must be a positive int"),
        ({"knn_backend": "annoy"}, "`knn_backend` must be one of"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RetrievalMetrics(**kwargs)


def test_functional_argument_errors():
    with pytest.raises(ValueError, match="`gallery` and `gallery_labels` must be given together"):
        retrieval_metrics(torch.randn(3, 2), torch.zeros(3, dtype=torch.long), torch.randn(3, 2))
    with pytest.raises(ValueError, match="`gallery` must have 2 features"):
        retrieval_metrics(
            torch.randn(3, 2),
            torch.zeros(3, dtype=torch.long),
            torch.randn(3, 4),
            torch.zeros(3, dtype=torch.long),
        )
    with pytest.raises(ValueError, match=r"`gallery_labels` must have shape \(3,\)"):
        retrieval_metrics(
            torch.randn(3, 2),
            torch.zeros(3, dtype=torch.long),
            torch.randn(3, 2),
            torch.zeros(2, dtype=torch.long),
        )


def test_a_large_class_is_handled_in_bounded_chunks():
    # One class holds most items: R is large for its queries, small for the others.
    embeddings, labels = _continuous(300, 4, 3)
    labels[labels == 1] = 0
    small = retrieval_metrics(embeddings, labels, top_k=(1, 5), memory_budget=20_000)
    large = retrieval_metrics(embeddings, labels, top_k=(1, 5))
    _assert_matches(small, retrieval_reference(embeddings, labels, top_k=(1, 5)))
    for name in large:
        assert float(small[name]) == pytest.approx(float(large[name]), abs=1e-6)


@requires_faiss
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_faiss_backend_matches_torch_without_ties(distance):
    embeddings, labels = _continuous(200, 8, 10, dtype=torch.float32)
    faiss_result = retrieval_metrics(
        embeddings, labels, top_k=TOP_K, distance=distance, knn_backend="faiss"
    )
    torch_result = retrieval_metrics(embeddings, labels, top_k=TOP_K, distance=distance)
    for name in torch_result:
        assert float(faiss_result[name]) == pytest.approx(float(torch_result[name]), abs=1e-5), name


@requires_faiss
def test_faiss_backend_with_flags_and_chunks():
    embeddings, labels = _continuous(120, 8, 6, dtype=torch.float32)
    is_query = torch.rand(120) < 0.5
    metric = RetrievalMetrics(top_k=TOP_K, knn_backend="faiss", chunk_size=13)
    metric.update(embeddings, labels, is_query=is_query)
    expected = retrieval_reference(embeddings, labels, is_query, top_k=TOP_K)
    _assert_matches(metric.compute(), expected)


@requires_matplotlib
def test_plot_draws_one_point_per_k():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = RetrievalMetrics(top_k=(1, 2, 5))
    metric.update(torch.randn(40, 4), torch.randint(0, 4, (40,)))
    fig, ax = metric.plot()
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [1, 2, 5]
    assert list(line.get_ydata()) == pytest.approx(
        [float(metric.compute()[f"cmc@{k}"]) for k in (1, 2, 5)]
    )
    plt.close(fig)
    with pytest.raises(ValueError, match="`plot` draws cmc@k"):
        RetrievalMetrics(metrics=["precision"]).plot()


def test_direction_of_every_result_is_the_metrics_own():
    from marginkit.metrics import RetrievalMetrics
    from marginkit.models import metric_mode

    metric = RetrievalMetrics(top_k=(1, 5))
    assert metric.higher_is_better is None
    directions = metric.higher_is_better_by_name
    assert set(directions) == set(metric.names)
    assert directions.pop("n_queries_without_match") is False
    assert all(directions.values()) and {"precision@1", "map@r", "cmc@5"} <= set(directions)
    assert metric_mode("val/n_queries_without_match") == "min"
    assert metric_mode("val/map@r") == "max" and metric_mode("train/loss") == "min"
