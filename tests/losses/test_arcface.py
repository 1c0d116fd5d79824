"""ArcFace specifics: label smoothing (with and without categories), grad modes, the MLP variant."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from marginkit.losses import ArcFaceLoss, ArcFaceLossWithMLP
from tests.helpers.float64_margin import phi_of_theta
from tests.losses.float64_heads import (
    cosines,
    leaf_copies,
    margin_head_loss,
    smoothed_cross_entropy_rows,
    target_theta,
    with_target,
)

D, C, S, M = 6, 7, 20.0, 0.5


def arcface_logits(x, w, y):
    """Float64 ArcFace logits s·z with φ at the target (insightface's continuation)."""
    phi = phi_of_theta(target_theta(x, w, y), 1.0, M, 0.0, "arcface")
    return S * with_target(cosines(x, w), y, phi)


def _run(head, x, y):
    x = x.clone().requires_grad_()
    loss = head(x, y)
    loss.sum().backward()
    return loss, x.grad, head.weight.grad


@pytest.mark.parametrize("epsilon", [0.1, 0.3])
def test_label_smoothing_matches_torch_label_smoothing(epsilon):
    head = ArcFaceLoss(D, C, m=M, s=S, smoothing_epsilon=epsilon, reduction="none").double()
    x, y = torch.randn(16, D, dtype=torch.float64), torch.randint(0, C, (16,))
    loss, grad_x, grad_w = _run(head, x, y)

    x_ref, w_ref = leaf_copies(x, head.weight)
    expected = F.cross_entropy(
        arcface_logits(x_ref, w_ref, y), y, label_smoothing=epsilon, reduction="none"
    )
    expected.sum().backward()
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grad_x, x_ref.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(grad_w, w_ref.grad, rtol=1e-6, atol=1e-9)


def _category_distribution(labels, label2category, epsilon):
    """Explicit targets: 1 − ε + ε/K on the label, ε/K on the rest of its category, 0 elsewhere."""
    rows = []
    for label in labels.tolist():
        members = [j for j in range(C) if label2category[j] == label2category[label]]
        row = torch.zeros(C, dtype=torch.float64)
        row[members] = epsilon / len(members)
        row[label] += 1.0 - epsilon
        rows.append(row)
    return torch.stack(rows)


@pytest.mark.parametrize(
    "label2category",
    [
        {0: 0, 1: 0, 2: 0, 3: 1, 4: 1, 5: 2, 6: 2},
        {0: "cat", 1: "dog", 2: "cat", 3: "dog", 4: "cat", 5: "bird", 6: "cat"},
        {j: j for j in range(C)},  # singleton categories: no smoothing at all
    ],
    ids=["contiguous", "strings", "singletons"],
)
def test_label_smoothing_inside_categories(label2category):
    epsilon = 0.2
    head = ArcFaceLoss(
        D, C, m=M, s=S, smoothing_epsilon=epsilon, label2category=label2category, reduction="none"
    ).double()
    x, y = torch.randn(20, D, dtype=torch.float64), torch.randint(0, C, (20,))
    loss, grad_x, grad_w = _run(head, x, y)

    x_ref, w_ref = leaf_copies(x, head.weight)
    target = _category_distribution(y, label2category, epsilon)
    expected = smoothed_cross_entropy_rows(arcface_logits(x_ref, w_ref, y), target)
    expected.sum().backward()
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grad_x, x_ref.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(grad_w, w_ref.grad, rtol=1e-6, atol=1e-9)


def test_categories_without_smoothing_change_nothing():
    plain = ArcFaceLoss(D, C, reduction="none")
    grouped = ArcFaceLoss(D, C, label2category={j: j % 2 for j in range(C)}, reduction="none")
    grouped.load_state_dict(plain.state_dict())
    x, y = torch.randn(9, D), torch.randint(0, C, (9,))
    torch.testing.assert_close(grouped(x, y), plain(x, y))


def test_label2category_from_a_hydra_config():
    config = OmegaConf.create({"label2category": {0: "a", 1: "a", 2: "b"}})
    head = ArcFaceLoss(4, 3, smoothing_epsilon=0.1, label2category=config.label2category)
    assert head(torch.randn(3, 4), torch.tensor([0, 1, 2])).isfinite()


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"smoothing_epsilon": 1.0}, ValueError, r"`smoothing_epsilon` must be in \[0, 1\)"),
        ({"smoothing_epsilon": -0.1}, ValueError, "`smoothing_epsilon` must be in"),
        ({"label2category": [0, 1, 1]}, TypeError, "`label2category` must be a mapping"),
        ({"label2category": {0: 0, 1: 0}}, ValueError, r"missing \[2\]"),
        ({"label2category": {0: 0, 1: 0, 2: 1, 5: 1}}, ValueError, r"unexpected \[5\]"),
    ],
)
def test_bad_smoothing_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ArcFaceLoss(4, 3, **kwargs)


def test_straight_through_keeps_the_value_and_passes_the_cosine_gradient():
    head = ArcFaceLoss(D, C, m=M, s=S, grad_mode="straight_through", reduction="none").double()
    x, y = torch.randn(12, D, dtype=torch.float64), torch.randint(0, C, (12,))
    loss, grad_x, grad_w = _run(head, x, y)

    x_ref, w_ref = leaf_copies(x, head.weight)

    def straight_through(theta):
        cos = torch.cos(theta)
        return cos + (phi_of_theta(theta, 1.0, M, 0.0, "arcface") - cos).detach()

    expected = margin_head_loss(x_ref, w_ref, y, S, straight_through)
    expected.sum().backward()
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grad_x, x_ref.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(grad_w, w_ref.grad, rtol=1e-6, atol=1e-9)


def test_mlp_head_is_arcface_on_the_projection():
    head = ArcFaceLossWithMLP(D, C, mlp_features=[10, 4], m=M, s=S, reduction="none").double()
    assert [type(layer).__name__ for layer in head.mlp] == ["Linear", "ReLU", "Linear"]
    assert head.in_features == D and head.weight.shape == (C, 4)
    x, y = torch.randn(8, D, dtype=torch.float64), torch.randint(0, C, (8,))
    loss = head(x, y)
    loss.sum().backward()
    grads = [p.grad.clone() for p in head.parameters()]

    head.zero_grad()
    projected = head.mlp(x)
    expected = margin_head_loss(
        projected, head.weight, y, S, lambda t: phi_of_theta(t, 1.0, M, 0.0, "arcface")
    )
    expected.sum().backward()
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-9)
    for got, p in zip(grads, head.parameters(), strict=True):
        torch.testing.assert_close(got, p.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(head.logits(x), S * cosines(projected, head.weight).detach())
