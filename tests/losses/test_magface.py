"""MagFace: the magnitude-aware margin row by row, the regulariser, value and gradients."""

from __future__ import annotations

import pytest
import torch

from marginkit.losses import MagFaceLoss
from tests.helpers.float64_margin import phi_of_theta
from tests.losses.float64_heads import leaf_copies, margin_head_loss

D, C, S = 6, 5, 16.0
L_A, U_A, L_M, U_M, LAMBDA_G = 2.0, 20.0, 0.3, 0.7, 5.0


def make(**kwargs):
    return MagFaceLoss(
        D, C, s=S, l_a=L_A, u_a=U_A, l_m=L_M, u_m=U_M, lambda_g=LAMBDA_G, **kwargs
    ).double()


def test_margin_row_by_row():
    head = make()
    x = torch.randn(9, D, dtype=torch.float64)
    x = (
        x
        / x.norm(dim=1, keepdim=True)
        * torch.tensor([0.5, 2.0, 3.0, 5.0, 10.0, 15.0, 20.0, 25.0, 11.0])[:, None]
    )
    margins = head.margin(head.magnitude(x))
    for row in range(9):
        magnitude = min(max(x[row].norm().item(), L_A), U_A)
        expected = (U_M - L_M) / (U_A - L_A) * (magnitude - L_A) + L_M
        assert margins[row].item() == pytest.approx(expected, rel=1e-12)
        g = 1 / magnitude + magnitude / U_A**2
        assert head.regularizer(head.magnitude(x[row : row + 1])).item() == pytest.approx(g)


@pytest.mark.parametrize("easy_margin", [False, True])
def test_value_and_gradients_match_float64_formula(easy_margin):
    head = make(easy_margin=easy_margin, reduction="none")
    x = torch.randn(16, D, dtype=torch.float64)
    x = (
        x
        * torch.linspace(1.0, 25.0, 16, dtype=torch.float64)[:, None]
        / x.norm(dim=1, keepdim=True)
    )
    x.requires_grad_()
    y = torch.randint(0, C, (16,))
    loss = head(x, y)
    loss.sum().backward()

    x_ref, w_ref = leaf_copies(x, head.weight)
    magnitude = x_ref.norm(dim=1).clamp(L_A, U_A)  # the gradient reaches the norm
    margin = (U_M - L_M) / (U_A - L_A) * (magnitude - L_A) + L_M
    fallback = "easy" if easy_margin else "arcface"
    expected = margin_head_loss(
        x_ref, w_ref, y, S, lambda t: phi_of_theta(t, 1.0, margin, 0.0, fallback)
    ) + LAMBDA_G * (1 / magnitude + magnitude / U_A**2)
    expected.sum().backward()
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(head.weight.grad, w_ref.grad, rtol=1e-6, atol=1e-9)
    assert head.last_logs["magface_magnitude"] == pytest.approx(magnitude.mean().item())
    assert head.last_logs["magface_regularizer"] == pytest.approx(
        (1 / magnitude + magnitude / U_A**2).mean().item()
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"l_a": 0.0}, "`l_a` must be > 0"),
        ({"l_a": 10.0, "u_a": 5.0}, "`u_a` must be > `l_a`"),
        ({"l_m": 0.8, "u_m": 0.4}, "`u_m` must be >= `l_m`"),
        ({"u_m": 3.5}, "`u_m` must be in"),
        ({"lambda_g": -1.0}, "`lambda_g` must be in"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MagFaceLoss(D, C, **kwargs)


def test_easy_margin_is_the_official_default():
    """The official MagLinear defaults to easy_margin=True: φ = cos θ where cos θ <= 0."""
    head = MagFaceLoss(D, C, s=S, l_a=L_A, u_a=U_A, l_m=L_M, u_m=U_M).double()
    assert head.easy_margin is True
    theta = torch.tensor([2.0, 2.9], dtype=torch.float64)  # cos < 0: no margin
    x = torch.randn(2, D, dtype=torch.float64) * 5.0
    phi = head.target_logit(torch.cos(theta), theta, x, torch.tensor([0, 1]))
    torch.testing.assert_close(phi, torch.cos(theta))
