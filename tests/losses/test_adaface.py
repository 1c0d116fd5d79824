"""AdaFace: the norm statistics and the per-sample margins row by row, value and gradients."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from marginkit.losses import AdaFaceLoss
from tests.helpers.float64_margin import phi_of_theta
from tests.losses.float64_heads import embeddings_at_angles, leaf_copies, margin_head_loss

D, C, S, M, H = 6, 5, 16.0, 0.4, 0.333


def margins_row_by_row(norms, mean, std):
    """(g_angle, g_add) per row in plain Python floats, from the paper's formulas."""
    g_angle, g_add = [], []
    for norm in norms:
        clipped = min(max(norm, 1e-3), 100.0)
        scaler = min(max(H * (clipped - mean) / (std + 1e-3), -1.0), 1.0)
        g_angle.append(-M * scaler)
        g_add.append(M + M * scaler)
    return g_angle, g_add


def test_statistics_update_before_use():
    head = AdaFaceLoss(D, C, m=M, h=H, s=S, t_alpha=0.01).double()
    x = torch.randn(10, D, dtype=torch.float64) * 15.0
    norms = [row.norm().item() for row in x]
    head(x, torch.randint(0, C, (10,)))
    mean = 0.99 * 20.0 + 0.01 * statistics.fmean(norms)
    std = 0.99 * 100.0 + 0.01 * statistics.stdev(norms)
    assert float(head.batch_mean) == pytest.approx(mean, rel=1e-12)
    assert float(head.batch_std) == pytest.approx(std, rel=1e-12)
    assert head.last_logs == pytest.approx({"adaface_norm_mean": mean, "adaface_norm_std": std})
    head.eval()
    head(x, torch.randint(0, C, (10,)))
    assert float(head.batch_mean) == pytest.approx(mean, rel=1e-12)  # no update in eval


def test_single_row_batch_keeps_the_std():
    head = AdaFaceLoss(D, C)
    loss = head(torch.randn(1, D), torch.tensor([2]))
    assert torch.isfinite(loss) and float(head.batch_std) == 100.0


@pytest.mark.parametrize("t_alpha", [1.0, 0.01])
def test_per_sample_margins_and_loss_row_by_row(t_alpha):
    head = AdaFaceLoss(D, C, m=M, h=H, s=S, t_alpha=t_alpha, reduction="none").double()
    y = torch.randint(0, C, (12,))
    # Norms from 0.5 to 40 (low and high quality), angles including tiny ones where θ + g_angle < 0.
    angles = torch.tensor([1e-5, 0.05, 0.2, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 0.1, 0.3, 0.02])
    norms = torch.tensor([40.0, 35.0, 0.5, 2.0, 5.0, 10.0, 20.0, 25.0, 30.0, 1.0, 15.0, 38.0])
    x = embeddings_at_angles(head.weight.detach(), y, angles) * norms[:, None].double()
    x.requires_grad_()
    loss = head(x, y)
    loss.sum().backward()

    norm_list = norms.tolist()
    mean = (1 - t_alpha) * 20.0 + t_alpha * statistics.fmean(norm_list)
    std = (1 - t_alpha) * 100.0 + t_alpha * statistics.stdev(norm_list)
    g_angle, g_add = margins_row_by_row(norm_list, mean, std)
    got_angle, got_add = head.margins(x.detach())
    for row in range(12):
        assert got_angle[row].item() == pytest.approx(g_angle[row], rel=1e-9, abs=1e-12)
        assert got_add[row].item() == pytest.approx(g_add[row], rel=1e-9, abs=1e-12)
    if t_alpha == 1.0:  # batch statistics: both kinds of samples present
        assert min(g_angle) < -0.1 and max(g_angle) > 0.1

    x_ref, w_ref = leaf_copies(x, head.weight)
    m2 = torch.tensor(g_angle, dtype=torch.float64)
    m3 = torch.tensor(g_add, dtype=torch.float64)
    expected = margin_head_loss(
        x_ref, w_ref, y, S, lambda t: phi_of_theta(t, 1.0, m2, m3, "monotonic")
    )
    expected.sum().backward()
    for row in range(12):
        assert loss[row].item() == pytest.approx(expected[row].item(), rel=1e-9, abs=1e-9)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(head.weight.grad, w_ref.grad, rtol=1e-6, atol=1e-9)


def test_target_logit_keeps_decreasing_where_the_official_code_clips():
    """A high-norm sample at θ < -g_angle: the official clip gives zero gradient; ours decreases."""
    head = AdaFaceLoss(3, 2, m=M, h=H).double().eval()
    theta = torch.linspace(0, 0.6, 601, dtype=torch.float64)
    x = torch.full((601, 3), 1000.0, dtype=torch.float64)  # norm far above the mean: g_angle = -m
    phi = head.target_logit(torch.cos(theta), theta, x, None)
    assert (phi.diff() < 0).all()
    assert not math.isclose(phi[0].item(), phi[300].item())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"m": 2.0}, r"`m` must be in \[0, 1.5708\)"),
        ({"h": 0.0}, "`h` must be > 0"),
        ({"t_alpha": 0.0}, r"`t_alpha` must be in \(0, 1\]"),
        ({"t_alpha": 1.5}, "`t_alpha` must be in"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaFaceLoss(D, C, **kwargs)
