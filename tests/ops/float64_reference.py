"""Float64 ground truth for the margin ops, written out here from the formulas (not the package).

* margin value  φ(x) = cos(m1·arccos x + m2) − m3, with the fallbacks;
* its derivative φ'(x) = m1·sin(m1·θ + m2) / sin θ, sin²θ floored at 1e-6 (the documented floor
  that keeps it finite at x = ±1), 1 where a fallback applies and for straight-through;
* loss_i = −log softmax(s·z_i)[t_i] with z_i the row with φ at its target;
* the analytic gradient ∂L/∂x_ij = w_i·s·(p_ij − [j = t_i])·(φ'(x_ij) if j = t_i else 1), with
  w_i the weight of row i in the reduction (0 for ignored rows).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SIN2_FLOOR = 1e-6


def phi_and_derivative(
    x: Tensor,
    m1: float,
    m2: float,
    m3: float,
    margin_fallback: str = "none",
    grad_mode: str = "exact",
) -> tuple[Tensor, Tensor]:
    """Return ``(φ(x), φ'(x))`` elementwise in float64."""
    x = x.double().clamp(-1.0, 1.0)
    theta = torch.acos(x)
    angle = m1 * theta + m2
    phi = torch.cos(angle) - m3
    derivative = m1 * torch.sin(angle) / torch.sqrt(torch.clamp(1.0 - x * x, min=SIN2_FLOOR))
    if m1 == 1.0 and m2 == 0.0:
        derivative = torch.ones_like(x)
    if margin_fallback == "arcface":
        fallback = angle > math.pi
        phi = torch.where(fallback, x - m2 * math.sin(m2) - m3, phi)
        derivative = torch.where(fallback, torch.ones_like(x), derivative)
    elif margin_fallback == "easy":
        fallback = x <= 0
        phi = torch.where(fallback, x, phi)
        derivative = torch.where(fallback, torch.ones_like(x), derivative)
    if grad_mode == "straight_through":
        derivative = torch.ones_like(x)
    return phi, derivative


def margin_ce_reference(
    logits: Tensor,
    label: Tensor,
    m1: float,
    m2: float,
    m3: float,
    scale: float,
    *,
    reduction: str = "mean",
    margin_fallback: str = "none",
    grad_mode: str = "exact",
    ignore_index: int = -100,
    grad_output: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(loss, softmax, grad_logits)`` in float64 for the given reduction.

    ``grad_logits`` is ∂(loss · grad_output)/∂logits (``grad_output`` defaults to ones shaped
    like the loss).
    """
    x = logits.double()
    label = label.reshape(-1).long()
    n_rows, n_cols = x.shape
    valid = label != ignore_index
    rows = torch.arange(n_rows)
    safe_label = torch.where(valid, label, torch.zeros_like(label))
    phi, derivative = phi_and_derivative(
        x[rows, safe_label], m1, m2, m3, margin_fallback, grad_mode
    )
    target = torch.zeros(n_rows, n_cols, dtype=torch.bool)
    target[rows[valid], label[valid]] = True
    z = torch.where(target, phi[:, None].expand(n_rows, n_cols), x) * scale
    log_prob = z - torch.logsumexp(z, dim=1, keepdim=True)
    softmax = log_prob.exp()
    per_row = torch.where(valid, -log_prob[rows, safe_label], torch.zeros(n_rows, dtype=x.dtype))

    if reduction == "none":
        loss, row_weight = per_row, torch.ones(n_rows, dtype=x.dtype)
    elif reduction == "sum":
        loss, row_weight = per_row.sum(), torch.ones(n_rows, dtype=x.dtype)
    else:
        count = max(int(valid.sum()), 1)
        loss = per_row.sum() / count
        row_weight = torch.full((n_rows,), 1.0 / count, dtype=x.dtype)
    if grad_output is None:
        grad_output = torch.ones_like(loss)
    row_weight = row_weight * grad_output.double() * valid
    local_slope = torch.where(target, derivative[:, None].expand(n_rows, n_cols), 1.0)
    grad = row_weight[:, None] * scale * (softmax - target.double()) * local_slope
    return loss, softmax, grad


def combined_margin_reference(
    logits: Tensor,
    label: Tensor,
    m1: float,
    m2: float,
    m3: float,
    *,
    margin_fallback: str = "none",
    grad_mode: str = "exact",
    ignore_index: int = -100,
) -> tuple[Tensor, Tensor]:
    """Return ``(margin logits, d output / d logits elementwise)`` in float64."""
    x = logits.double()
    label = label.reshape(-1).long()
    n_rows = x.shape[0]
    valid = label != ignore_index
    rows = torch.arange(n_rows)[valid]
    phi, derivative = phi_and_derivative(
        x[rows, label[valid]], m1, m2, m3, margin_fallback, grad_mode
    )
    out = x.clone()
    out[rows, label[valid]] = phi
    slope = torch.ones_like(x)
    slope[rows, label[valid]] = derivative
    return out, slope
