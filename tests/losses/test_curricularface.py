"""CurricularFace: the running t and the hard-negative rewrite against a brute-force loop."""

from __future__ import annotations

import math

import pytest
import torch

from marginkit.losses import CurricularFaceLoss
from tests.helpers.float64_margin import angle_between, phi_of_theta
from tests.losses.float64_heads import cosines, cross_entropy_rows, leaf_copies

D, C, S, M = 6, 5, 16.0, 0.5


def curricular_reference(x, w, y, t):
    """Float64, element by element: φ at the target, cos·(t + cos) for hard negatives."""
    cos = cosines(x, w)
    theta = angle_between(x, w[y])
    rows = []
    for i in range(len(y)):
        target = phi_of_theta(theta[i : i + 1], 1.0, M, 0.0, "arcface")[0]
        hard_threshold = math.cos(theta[i].item() + M)
        row = []
        for j in range(C):
            c = cos[i, j]
            if j == y[i]:
                row.append(target)
            elif c.item() > hard_threshold:
                row.append(c * (t + c))
            else:
                row.append(c)
        rows.append(torch.stack(row))
    return cross_entropy_rows(S * torch.stack(rows), y)


def test_running_t_follows_the_mean_target_cosine():
    head = CurricularFaceLoss(D, C, m=M, s=S, momentum=0.01).double()
    x, y = torch.randn(12, D, dtype=torch.float64), torch.randint(0, C, (12,))
    mean_cos = torch.cos(angle_between(x, head.weight.detach()[y])).mean().item()
    head(x, y)
    assert float(head.t) == pytest.approx(0.01 * mean_cos, rel=1e-9)
    head(x, y)
    assert float(head.t) == pytest.approx(0.99 * 0.01 * mean_cos + 0.01 * mean_cos, rel=1e-9)
    assert head.last_logs["curricular_t"] == pytest.approx(float(head.t))
    head.eval()
    before = float(head.t)
    head(x, y)
    assert float(head.t) == before


def test_value_and_gradients_match_brute_force():
    head = CurricularFaceLoss(D, C, m=M, s=S, momentum=0.2, reduction="none").double()
    head.t.fill_(0.4)
    x = torch.randn(16, D, dtype=torch.float64) * 2.0
    y = torch.randint(0, C, (16,))
    # Pull a few embeddings toward a wrong class so that hard negatives exist.
    x[:5] = head.weight.detach()[(y[:5] + 1) % C] * 2.0 + 0.3 * x[:5]
    x.requires_grad_()
    x_ref, w_ref = leaf_copies(x, head.weight)
    mean_cos = torch.cos(angle_between(x_ref, w_ref[y])).mean().item()
    t = 0.8 * 0.4 + 0.2 * mean_cos  # updated before use

    loss = head(x, y)
    loss.sum().backward()
    expected = curricular_reference(x_ref, w_ref, y, t)
    expected.sum().backward()
    assert float(head.t) == pytest.approx(t, rel=1e-12)
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(head.weight.grad, w_ref.grad, rtol=1e-6, atol=1e-9)


def test_bad_momentum():
    with pytest.raises(ValueError, match="`momentum` must be in"):
        CurricularFaceLoss(D, C, momentum=1.5)
