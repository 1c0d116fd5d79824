"""SV-X-Softmax: identical to the normalised softmax by default, mis-classified negatives re-weighted."""

from __future__ import annotations

import pytest
import torch

from marginkit.losses import NormFaceLoss, SVXSoftmaxLoss
from tests.helpers.float64_margin import angle_between, phi_of_theta
from tests.losses.float64_heads import cosines, cross_entropy_rows, leaf_copies

D, C, S = 6, 5, 16.0


def test_default_parameters_are_the_normalised_softmax():
    svx = SVXSoftmaxLoss(D, C, s=S, reduction="none")
    norm = NormFaceLoss(D, C, s=S, reduction="none")
    norm.load_state_dict(svx.state_dict())
    x, y = torch.randn(10, D), torch.randint(0, C, (10,))
    torch.testing.assert_close(svx(x, y), norm(x, y))
    # ... which is F.cross_entropy on s·cos.
    expected = torch.nn.functional.cross_entropy(
        S * cosines(x, svx.weight.detach()).float(), y, reduction="none"
    )
    torch.testing.assert_close(svx(x, y), expected, rtol=1e-5, atol=1e-5)


def svx_reference(x, w, y, t, m1, m2, m3):
    """Float64 element by element: logit t·cos + t − 1 for negatives above the target logit."""
    cos = cosines(x, w)
    phi = phi_of_theta(angle_between(x, w[y]), m1, m2, m3, "monotonic")
    rows = []
    for i in range(len(y)):
        row = []
        for j in range(C):
            c = cos[i, j]
            if j == y[i]:
                row.append(phi[i])
            elif c.item() > phi[i].item():
                row.append(t * c + t - 1.0)
            else:
                row.append(c)
        rows.append(torch.stack(row))
    return cross_entropy_rows(S * torch.stack(rows), y)


@pytest.mark.parametrize(
    "t,m1,m2,m3", [(1.2, 1.0, 0.0, 0.35), (1.5, 1.0, 0.4, 0.0), (1.0, 1.2, 0.1, 0.1)]
)
def test_value_and_gradients_match_brute_force(t, m1, m2, m3):
    head = SVXSoftmaxLoss(D, C, s=S, t=t, m1=m1, m2=m2, m3=m3, reduction="none").double()
    x = torch.randn(18, D, dtype=torch.float64)
    y = torch.randint(0, C, (18,))
    x[:6] = head.weight.detach()[(y[:6] + 2) % C] + 0.2 * x[:6]  # mis-classified rows
    x.requires_grad_()
    loss = head(x, y)
    loss.sum().backward()
    x_ref, w_ref = leaf_copies(x, head.weight)
    expected = svx_reference(x_ref, w_ref, y, t, m1, m2, m3)
    expected.sum().backward()
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(head.weight.grad, w_ref.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"t": 0.9}, r"`t` must be in >= 1"), ({"m1": 0.0}, "`m1`"), ({"m2": -0.2}, "`m2`")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SVXSoftmaxLoss(D, C, **kwargs)


def test_from_gluonface_takes_gluonfaces_margin_names():
    """gluon-face's m2 is the cosine margin and m3 the angular one: φ = cos(m1·θ + m3) − m2."""
    head = SVXSoftmaxLoss.from_gluonface(D, C, s=S, t=1.2, m1=1.0, m2=0.35, m3=0.1).double()
    head.reduction = "none"
    x, y = torch.randn(12, D, dtype=torch.float64), torch.randint(0, C, (12,))
    theta = angle_between(x, head.weight.detach()[y])
    phi = head.target_logit(torch.cos(theta), theta, x, y)
    torch.testing.assert_close(phi, torch.cos(theta + 0.1) - 0.35)
    expected = svx_reference(x, head.weight.detach(), y, 1.2, 1.0, 0.1, 0.35)
    torch.testing.assert_close(head(x, y), expected, rtol=1e-9, atol=1e-9)
