"""LGMLoss against the L-GM formula (identity covariance) written out in float64, and more."""

from __future__ import annotations

import pytest
import torch

from marginkit.losses import LGMLoss


def lgm_reference(x, means, labels, alpha, lamda):
    """Per-row (classification, likelihood) from d_ik = ½‖x_i − μ_k‖², looped, float64."""
    classification, likelihood = [], []
    for i in range(x.shape[0]):
        y = int(labels[i])
        scores = []
        for k in range(means.shape[0]):
            distance = 0.5 * ((x[i] - means[k]) ** 2).sum()
            scores.append(-(1.0 + alpha) * distance if k == y else -distance)
            if k == y:
                target_distance = distance
        scores = torch.stack(scores)
        top = scores.max().detach()
        classification.append(top + torch.log(torch.exp(scores - top).sum()) - scores[y])
        likelihood.append(target_distance)
    return torch.stack(classification), torch.stack(likelihood)


@pytest.mark.parametrize("alpha,lamda", [(0.1, 0.1), (1.0, 0.0), (0.0, 0.5)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_value_and_gradients_match_formula(alpha, lamda, reduction):
    head = LGMLoss(5, 3, alpha=alpha, lamda=lamda, reduction=reduction).double()
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 4, 4, 1])
    value = head(x, labels)
    ref_x = x.detach().clone().requires_grad_()
    ref_mu = head.weight.detach().clone().requires_grad_()
    classification, likelihood = lgm_reference(ref_x, ref_mu, labels, alpha, lamda)
    rows = classification + lamda * likelihood
    expected = {"mean": rows.mean(), "sum": rows.sum(), "none": rows}[reduction]
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    weights = torch.linspace(0.5, 1.5, 7, dtype=torch.float64) if reduction == "none" else 1.0
    (value * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(head.weight.grad, ref_mu.grad, rtol=1e-9, atol=1e-12)
    assert head.last_logs["classification"] == pytest.approx(float(classification.detach().mean()))
    assert head.last_logs["likelihood"] == pytest.approx(float(likelihood.detach().mean()))


def test_large_features_far_outside_the_unit_ball():
    """The logits handed to the N×C op are distances, not cosines: |z| ≫ 1 must still be exact."""
    head = LGMLoss(4, 6, alpha=0.3, lamda=0.0, reduction="none").double()
    with torch.no_grad():
        head.weight.mul_(40.0)
    x = 40.0 * torch.randn(10, 6, dtype=torch.float64)
    labels = torch.randint(0, 4, (10,))
    classification, _ = lgm_reference(x, head.weight.detach(), labels, 0.3, 0.0)
    torch.testing.assert_close(head(x, labels), classification, rtol=1e-9, atol=1e-9)
    assert torch.isfinite(head(x.float(), labels)).all()


def test_logits_are_negative_half_squared_distances():
    head = LGMLoss(3, 2).double()
    x = torch.randn(4, 2, dtype=torch.float64)
    expected = torch.empty(4, 3, dtype=torch.float64)
    for i in range(4):
        for k in range(3):
            expected[i, k] = -0.5 * float(((x[i] - head.weight.detach()[k]) ** 2).sum())
    torch.testing.assert_close(head.logits(x), expected)


def test_embedding_size_is_an_alias_of_in_features():
    head = LGMLoss(num_classes=3, embedding_size=5)
    assert head.in_features == head.embedding_size == 5 and head.weight.shape == (3, 5)
    assert LGMLoss(3, 5, embedding_size=5).embedding_size == 5
    with pytest.raises(ValueError, match="`in_features` \\(5\\) and `embedding_size` \\(4\\)"):
        LGMLoss(3, 5, embedding_size=4)
    with pytest.raises(TypeError, match="`in_features`"):
        LGMLoss(3)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"alpha": -0.1}, ValueError, "`alpha`"),
        ({"lamda": -1.0}, ValueError, "`lamda`"),
        ({"lamda": None}, TypeError, "`lamda`"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        LGMLoss(**{"num_classes": 3, "in_features": 4, **kwargs})


def test_autocast_keeps_the_distances_in_the_heads_dtype():
    """Under bf16 autocast the expansion ‖x‖² + ‖μ‖² − 2x·μ would lose the distances."""
    head = LGMLoss(4, 8, alpha=0.1, lamda=0.1)
    with torch.no_grad():
        head.weight.mul_(20.0)
    x, labels = 20.0 * torch.randn(16, 8), torch.randint(0, 4, (16,))
    classification, likelihood = lgm_reference(
        x.double(), head.weight.detach().double(), labels, 0.1, 0.1
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = head(x, labels)
    expected = (classification + 0.1 * likelihood).mean()
    torch.testing.assert_close(value.double(), expected, rtol=1e-4, atol=1e-4)
