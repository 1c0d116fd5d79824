"""SphereFace: ψ monotonic and continuous for m = 1..4, the λ annealing, value and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from marginkit.losses import SphereFaceLoss
from tests.helpers.float64_margin import phi_of_theta
from tests.losses.float64_heads import leaf_copies, margin_head_loss


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_psi_is_continuous_and_decreasing_on_0_pi(m):
    head = SphereFaceLoss(4, 3, m=m).double()
    theta = torch.linspace(0, math.pi, 20001, dtype=torch.float64)
    psi = head.target_logit(torch.cos(theta), theta, None, None)
    step = theta[1] - theta[0]
    differences = psi.diff()
    assert (differences < 0).all()  # strictly decreasing
    assert differences.abs().max() <= m * step * (1 + 1e-9)  # no jump: |ψ'| <= m
    assert psi[0].item() == pytest.approx(1.0)
    assert psi[-1].item() == pytest.approx(1.0 - 2.0 * m)
    # The paper's piecewise definition, written out per interval.
    k = torch.clamp(torch.floor(m * theta / math.pi), max=m - 1)
    paper = (-1.0) ** k * torch.cos(m * theta) - 2.0 * k
    torch.testing.assert_close(psi, paper, rtol=0, atol=1e-12)


@pytest.mark.parametrize("m", [1, 2, 4])
def test_loss_decreases_as_the_target_angle_shrinks(m):
    head = SphereFaceLoss(3, 2, m=m, s=8.0, reduction="none").double()
    head.weight.data = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    theta = torch.linspace(0, math.pi, 721, dtype=torch.float64)
    x = torch.stack([torch.cos(theta), torch.sin(theta), torch.zeros_like(theta)], dim=1)
    loss = head(x, torch.zeros(len(theta), dtype=torch.long))
    assert (loss.diff() > 0).all()


def lambda_after(steps, base=1000.0, gamma=0.12, power=1.0, minimum=5.0):
    return max(minimum, base * (1 + gamma * steps) ** (-power))


def test_annealing_schedule_and_value():
    head = SphereFaceLoss(5, 4, m=4, s=10.0, annealing=True, reduction="none").double()
    x, y = torch.randn(10, 5, dtype=torch.float64), torch.randint(0, 4, (10,))
    for _ in range(3):
        head(x, y)
    assert int(head.iteration) == 3
    head.eval()
    head(x, y)  # evaluation forwards do not count
    assert int(head.iteration) == 3
    assert float(head.current_lambda()) == pytest.approx(lambda_after(3))
    head.train()

    x = x.clone().requires_grad_()
    loss = head(x, y)  # 4th training forward: λ after 4 steps
    loss.sum().backward()
    lam = lambda_after(4)
    x_ref, w_ref = leaf_copies(x, head.weight)

    def blended(theta):
        psi = phi_of_theta(theta, 4.0, 0.0, 0.0, "monotonic")
        return (lam * torch.cos(theta) + psi) / (1 + lam)

    expected = margin_head_loss(x_ref, w_ref, y, 10.0, blended)
    expected.sum().backward()
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(head.weight.grad, w_ref.grad, rtol=1e-6, atol=1e-9)


def test_lambda_reaches_its_floor_and_is_saved_in_checkpoints():
    head = SphereFaceLoss(5, 4, annealing=True, lambda_min=5.0)
    head.iteration.fill_(10**6)
    assert float(head.current_lambda()) == pytest.approx(5.0)
    restored = SphereFaceLoss(5, 4, annealing=True)
    restored.load_state_dict(head.state_dict())
    assert int(restored.iteration) == 10**6
    assert float(SphereFaceLoss(5, 4).current_lambda()) == 0.0  # annealing off


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"m": 0}, ValueError, "`m` must be positive"),
        ({"m": 2.5}, TypeError, "`m` must be an int"),
        ({"annealing": "yes"}, TypeError, "`annealing` must be a bool"),
        ({"lambda_min": -1.0}, ValueError, "`lambda_min` must be in"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        SphereFaceLoss(4, 3, **kwargs)
