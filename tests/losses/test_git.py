"""GitLoss against its pull + push formula written out with loops, gradients, errors, training."""

from __future__ import annotations

import pytest
import torch

from marginkit.losses import GitLoss


def git_reference(x, centers, labels, lamda_c, lamda_g):
    """Per-row (pull, push) in float64, differentiable, from explicit loops over centres."""
    num_classes = centers.shape[0]
    pulls, pushes = [], []
    for i in range(x.shape[0]):
        pulls.append(0.5 * lamda_c * ((x[i] - centers[labels[i]]) ** 2).sum())
        push = x.new_zeros(())
        for j in range(num_classes):
            if j != int(labels[i]):
                push = push + 1.0 / (1.0 + ((x[i] - centers[j]) ** 2).sum())
        pushes.append(lamda_g / (num_classes - 1) * push)
    return torch.stack(pulls), torch.stack(pushes)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_value_and_gradients_match_formula(reduction):
    loss_fn = GitLoss(5, 4, lamda_c=0.3, lamda_g=2.0, reduction=reduction).double()
    x = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 4, 0, 2, 2, 4, 3])
    with torch.no_grad():
        x[0] = loss_fn.centers[3]  # sitting on another class's centre: the push is largest
    value = loss_fn(x, labels)
    ref_x = x.detach().clone().requires_grad_()
    ref_c = loss_fn.centers.detach().clone().requires_grad_()
    pull, push = git_reference(ref_x, ref_c, labels, 0.3, 2.0)
    rows = pull + push
    expected = {"mean": rows.mean(), "sum": rows.sum(), "none": rows}[reduction]
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    weights = torch.linspace(0.5, 1.5, 9, dtype=torch.float64) if reduction == "none" else 1.0
    (value * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss_fn.centers.grad, ref_c.grad, rtol=1e-10, atol=1e-12)
    assert loss_fn.last_logs["center"] == pytest.approx(float(pull.detach().mean()))
    assert loss_fn.last_logs["push"] == pytest.approx(float(push.detach().mean()))


def test_push_is_bounded_and_zero_weight_leaves_center_loss():
    loss_fn = GitLoss(3, 2, lamda_c=1.0, lamda_g=0.0).double()
    x, labels = torch.randn(4, 2, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    centers = loss_fn.centers.detach()
    expected = 0.5 * ((x - centers[labels]) ** 2).sum(1).mean()
    torch.testing.assert_close(loss_fn(x, labels), expected)
    only_push = GitLoss(3, 2, lamda_c=0.0, lamda_g=1.0)
    assert 0.0 < only_push(torch.randn(50, 2), torch.randint(0, 3, (50,))).item() <= 1.0


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"num_classes": 1}, ValueError, "`num_classes` must be >= 2"),
        ({"lamda_c": -1.0}, ValueError, "`lamda_c`"),
        ({"lamda_g": float("nan")}, ValueError, "`lamda_g`"),
        ({"lamda_g": [0.1]}, TypeError, "`lamda_g`"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        GitLoss(**{"num_classes": 3, "in_features": 2, **kwargs})


def test_push_is_exact_for_large_features_near_a_centre():
    """float32 at |x| ≈ 3e3: ‖x‖² + ‖c‖² − 2x·c cancels (8% off); the differences do not."""
    torch.manual_seed(0)
    loss_fn = GitLoss(4, 8, lamda_c=0.0, lamda_g=1.0, reduction="none")
    offset = torch.full((8,), 3e3 / 8**0.5)
    with torch.no_grad():
        loss_fn.centers.copy_(offset + torch.randn(4, 8))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    x = offset + torch.randn(6, 8)
    _, push = git_reference(x.double(), loss_fn.centers.detach().double(), labels, 0.0, 1.0)
    torch.testing.assert_close(loss_fn(x, labels).double(), push, rtol=1e-4, atol=0)
