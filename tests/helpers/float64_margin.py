"""Float64 ground truth for the margin maths, written out here from the formulas (not the package).

The tests' one copy of the margin arithmetic (the package's is ``marginkit.ops._margin``):

* in angles: φ(θ) = cos(m1·θ + m2) − m3 with the fallbacks, including SphereFace's piecewise
  ψ (:func:`phi_of_theta`), and the angle from vectors (:func:`angle_between`);

* margin value  φ(x) = cos(m1·arccos x + m2) − m3, with the fallbacks;
* its derivative φ'(x) = m1·sin(m1·θ + m2) / sin θ, sin²θ floored at 1e-6 (the documented floor
  that keeps it finite at x = ±1), 1 where a fallback applies and for straight-through (and for
  m1 = 1, m2 = 0, where φ = x − m3), times (−1)^k for the "monotonic" ψ;
* loss_i = −log softmax(s·z_i)[t_i] with z_i the row with φ at its target;
* the analytic gradient ∂L/∂x_ij = w_i·s·(p_ij − [j = t_i])·(φ'(x_ij) if j = t_i else 1), with
  w_i the weight of row i in the reduction (0 for ignored rows).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

SIN2_FLOOR = 1e-6


def angle_between(embeddings: Tensor, weights: Tensor) -> Tensor:
    """Row-wise angle (float64) between un-normalised vectors: atan2(|a×b|, a·b) via Gram terms."""
    a = embeddings.double() / embeddings.double().norm(dim=1, keepdim=True)
    b = weights.double() / weights.double().norm(dim=1, keepdim=True)
    cos = (a * b).sum(1)
    sin = (b - cos[:, None] * a).norm(dim=1)
    return torch.atan2(sin, cos)


def phi_of_theta(theta: Tensor, m1=1.0, m2=0.0, m3=0.0, margin_fallback: str = "none") -> Tensor:
    """φ(θ) in float64; m1/m2/m3 may be per-row tensors. Fallbacks: none, arcface, easy, monotonic."""
    theta = theta.double()
    angle = m1 * theta + m2
    if margin_fallback == "monotonic":
        k = torch.floor(angle / math.pi)
        return (-1.0) ** k * torch.cos(angle) - 2 * k - m3
    phi = torch.cos(angle) - m3
    cos = torch.cos(theta)
    if margin_fallback == "arcface":
        sin_m2 = torch.sin(m2) if isinstance(m2, Tensor) else math.sin(m2)
        phi = torch.where(angle > math.pi, cos - m2 * sin_m2 - m3, phi)
    elif margin_fallback == "easy":
        phi = torch.where(cos > 0, phi, cos)
    return phi


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
    if margin_fallback == "monotonic":  # SphereFace's ψ: (−1)^k cos(angle) − 2k − m3
        k = torch.floor(angle / math.pi)
        sign = (-1.0) ** k
        phi = sign * torch.cos(angle) - 2 * k - m3
        derivative = sign * derivative
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


def reduce_rows(per_row: Tensor, valid: Tensor, reduction: str) -> tuple[Tensor, Tensor]:
    """``(loss, row_weight)``: the reduced loss and each row's weight in it.

    ``"mean"`` divides by the number of valid rows (at least 1); ignored rows must already be 0.
    """
    ones = torch.ones(per_row.shape[0], dtype=per_row.dtype)
    if reduction == "none":
        return per_row, ones
    if reduction == "sum":
        return per_row.sum(), ones
    count = max(int(valid.sum()), 1)
    return per_row.sum() / count, ones / count


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

    loss, row_weight = reduce_rows(per_row, valid, reduction)
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


def linear_margin_ce_reference(
    embeddings: Tensor,
    weight: Tensor,
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
    """``(loss, grad_embeddings, grad_weight)`` in float64 through the full cosine matrix.

    The textbook computation: normalise, multiply into the (N, C) cosines, put φ of the angle
    between the vectors (:func:`angle_between`, exact for tiny angles, unlike ``arccos``) in the
    target column, log-softmax, reduce, and let float64 autograd differentiate it all.
    """
    emb = embeddings.detach().double().requires_grad_()
    wei = weight.detach().double().requires_grad_()
    label = label.reshape(-1)
    cosines = F.normalize(emb, dim=1) @ F.normalize(wei, dim=1).T
    valid = label != ignore_index
    safe = torch.where(valid, label, torch.zeros_like(label))
    phi = phi_of_theta(angle_between(emb, wei[safe]), m1, m2, m3, margin_fallback)
    if grad_mode == "straight_through":
        cos_target = cosines.gather(1, safe[:, None])[:, 0]
        phi = cos_target + (phi - cos_target).detach()
    is_target = F.one_hot(safe, wei.shape[0]).bool() & valid[:, None]
    logits = scale * torch.where(is_target, phi[:, None], cosines)
    per_row = -torch.log_softmax(logits, dim=1).gather(1, safe[:, None])[:, 0]
    per_row = torch.where(valid, per_row, torch.zeros_like(per_row))
    loss, _row_weight = reduce_rows(per_row, valid, reduction)
    loss.backward(torch.ones_like(loss) if grad_output is None else grad_output.double())
    return loss.detach(), emb.grad, wei.grad
