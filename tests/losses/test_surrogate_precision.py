"""SurrogatePrecision against a float64 formula of the sigmoid-relaxed Precision@k (loops)."""

from __future__ import annotations

import math

import pytest
import torch

from marginkit.losses import SurrogatePrecision, get_loss


def _distance(u, v):
    sq = sum((u[k] - v[k]) ** 2 for k in range(len(u)))
    return sq.sqrt() if float(sq.detach()) > 0 else torch.zeros((), dtype=u.dtype)


def _surrogate_by_loops(features, labels, k, t1, t2):
    """Patel et al. 2022 / OML: every item queries the whole batch (itself included, k' = k + 1);
    rank_qg = Σ_g' σ((d_qg − d_qg') / t2); P_q = Σ_{g relevant} σ((k' − rank_qg) / t1) /
    min(#relevant, k'); returns the per-query 1 − P_q."""
    n = len(labels)
    kp = k + 1
    d = [[_distance(features[q], features[g]) for g in range(n)] for q in range(n)]
    losses = []
    for q in range(n):
        relevant = [g for g in range(n) if labels[g] == labels[q]]
        numerator = 0.0
        for g in relevant:
            rank = sum(torch.sigmoid((d[q][g] - d[q][other]) / t2) for other in range(n))
            numerator = numerator + torch.sigmoid((kp - rank) / t1)
        losses.append(1.0 - numerator / min(len(relevant), kp))
    return torch.stack(losses)


def _batch(kind: str):
    if kind == "tied":  # repeated rows within and across classes, a one-item class
        features = torch.tensor(
            [[0, 0], [0.05, 0], [0, 0], [1, 1], [1, 1], [0.5, 0.5], [3, 0], [0, 0.05]],
            dtype=torch.float64,
        )
        return features, [0, 0, 1, 1, 2, 2, 2, 3]
    generator = torch.Generator().manual_seed(0)
    features = 0.3 * torch.randn(9, 3, generator=generator, dtype=torch.float64)
    return features, [0, 1, 2, 0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("kind", ["tied", "random"])
@pytest.mark.parametrize("k,t1,t2", [(1, 1.0, 0.01), (3, 0.5, 0.1), (7, 1.0, 0.05)])
@pytest.mark.parametrize("memory_budget", [64 * 2**20, 1])  # one block / one query per block
def test_value_and_gradient_match_the_loops(kind, k, t1, t2, memory_budget):
    features, labels = _batch(kind)
    x = features.clone().requires_grad_()
    loss_fn = SurrogatePrecision(k, t1, t2, reduction="none", memory_budget=memory_budget)
    ours = loss_fn(x, torch.tensor(labels))
    x_ref = features.clone().requires_grad_()
    expected = _surrogate_by_loops(x_ref, labels, k, t1, t2)
    torch.testing.assert_close(ours, expected)
    weights = torch.linspace(0.5, 1.5, len(labels), dtype=torch.float64)
    (ours * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    assert loss_fn.last_logs["precision"] == pytest.approx(1.0 - float(expected.detach().mean()))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reductions(reduction):
    features, labels = _batch("random")
    ours = SurrogatePrecision(2, reduction=reduction)(features, torch.tensor(labels))
    per_query = _surrogate_by_loops(features, labels, 2, 1.0, 0.01)
    expected = per_query.mean() if reduction == "mean" else per_query.sum()
    torch.testing.assert_close(ours, expected)


def test_chunked_with_checkpointing_equals_one_block_on_a_bigger_batch():
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(48, 8, generator=generator)
    labels = torch.arange(12).repeat_interleave(4)
    results = []
    for memory_budget in (64 * 2**20, 20_000):
        x = features.clone().requires_grad_()
        loss = SurrogatePrecision(3, memory_budget=memory_budget)(x, labels)
        loss.backward()
        results.append((loss.detach(), x.grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_well_separated_classes_reach_precision_one():
    """Each class a tight cluster far from the others: the surrogate is ≈ exact Precision@k."""
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    features = centres.repeat_interleave(4, 0) + 0.1 * torch.randn(12, 2, dtype=torch.float64)
    labels = torch.arange(3).repeat_interleave(4)
    loss = SurrogatePrecision(k=3, temperature1=0.05)(features, labels)
    assert loss.item() == pytest.approx(0.0, abs=1e-3)
    assert math.isfinite(loss.item())


def test_k_larger_than_the_gallery_is_clamped_with_one_warning():
    """OML's surrogate_precision clamps k to the gallery (4 other items here): k = 4 is used."""
    features = torch.randn(5, 2, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 1])
    loss_fn = SurrogatePrecision(k=5, reduction="none")
    with pytest.warns(UserWarning, match=r"`k` \(5\) is larger than the gallery .* using k = 4"):
        clamped = loss_fn(features, labels)
    expected = _surrogate_by_loops(features, labels.tolist(), 4, 1.0, 0.01)
    torch.testing.assert_close(clamped, expected)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per loss: the second batch does not warn again
        torch.testing.assert_close(loss_fn(features, labels), expected)


def test_registry_and_pk_batches():
    loss_fn = get_loss("surrogate_precision", k=2)
    assert isinstance(loss_fn, SurrogatePrecision) and loss_fn.k == 2
    assert loss_fn.requires_balanced_batches and loss_fn.min_instances_per_class == 2


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"k": 0}, ValueError, "`k` must be positive"),
        ({"k": 2.0}, TypeError, "`k` must be an int"),
        ({"k": 1, "temperature1": 0.0}, ValueError, "`temperature1` must be a finite number > 0"),
        ({"k": 1, "temperature2": -1.0}, ValueError, "`temperature2` must be a finite number > 0"),
        ({"k": 1, "reduction": "max"}, ValueError, "`reduction` must be one of"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        SurrogatePrecision(**kwargs)


def test_bad_input_names_the_argument():
    loss_fn = SurrogatePrecision(k=1)
    with pytest.raises(ValueError, match="`features` must be finite"):
        loss_fn(torch.tensor([[0.0], [float("nan")], [1.0]]), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match=r"`labels` must have shape \(3,\)"):
        loss_fn(torch.randn(3, 2), torch.tensor([0, 1]))
