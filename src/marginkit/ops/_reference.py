"""Plain-torch ground truth for the fused margin cross-entropy (single process).

Written for clarity, not speed: it materialises the whole N×C scaled logit matrix and lets torch's
autograd differentiate it. Every kernel (CPU, Triton) is tested against it; it uses the one copy
of the margin arithmetic in :mod:`marginkit.ops._margin`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from marginkit.ops._dtypes import accumulation_dtype
from marginkit.ops._margin import margin_target


def margin_logits_reference(
    logits: Tensor,
    label: Tensor,
    m1: float = 1.0,
    m2: float = 0.0,
    m3: float = 0.0,
    margin_fallback: str = "none",
    grad_mode: str = "exact",
    ignore_index: int = -100,
) -> Tensor:
    """Return ``logits`` with each row's target cosine replaced by its margin value (unscaled).

    Rows whose label is ``ignore_index`` are left unchanged. The gradient with respect to the
    target cosine is :func:`~marginkit.ops._margin.margin_target`'s ``dphi`` (so
    ``grad_mode="straight_through"`` and the ``sin θ`` floor are honoured by autograd).
    """
    label = label.reshape(-1).long()
    valid = label != ignore_index
    safe_label = torch.where(valid, label, torch.zeros_like(label))
    cos_target = logits.gather(1, safe_label[:, None])[:, 0]
    phi, dphi = margin_target(cos_target.detach(), m1, m2, m3, margin_fallback, grad_mode)
    # Value phi, derivative dphi with respect to cos_target.
    phi = phi + (cos_target - cos_target.detach()) * dphi
    phi = torch.where(valid, phi, cos_target)
    one_hot = F.one_hot(safe_label, logits.shape[1]).to(torch.bool) & valid[:, None]
    return torch.where(one_hot, phi[:, None].to(logits.dtype), logits)


def margin_cross_entropy_reference(
    logits: Tensor,
    label: Tensor,
    margin1: float = 1.0,
    margin2: float = 0.5,
    margin3: float = 0.0,
    scale: float = 64.0,
    return_softmax: bool = False,
    reduction: str = "mean",
    *,
    margin_fallback: str = "none",
    grad_mode: str = "exact",
    ignore_index: int = -100,
) -> Tensor | tuple[Tensor, Tensor]:
    """Margin softmax cross-entropy by composition of plain torch ops (see the public op).

    Half-precision inputs are computed in float32; float64 stays float64. ``"mean"`` divides by
    the number of rows whose label is not ``ignore_index`` (0 when there are none).
    """
    compute_dtype = accumulation_dtype(logits.dtype)
    x = logits.to(compute_dtype)
    label = label.reshape(-1).long()
    valid = label != ignore_index
    z = scale * margin_logits_reference(
        x, label, margin1, margin2, margin3, margin_fallback, grad_mode, ignore_index
    )
    log_prob = torch.log_softmax(z, dim=1)
    safe_label = torch.where(valid, label, torch.zeros_like(label))
    per_row = -log_prob.gather(1, safe_label[:, None])[:, 0]
    per_row = torch.where(valid, per_row, torch.zeros_like(per_row))
    if reduction == "none":
        loss = per_row
    elif reduction == "sum":
        loss = per_row.sum()
    else:
        loss = per_row.sum() / valid.sum().clamp(min=1)
    if return_softmax:
        return loss, log_prob.exp().to(logits.dtype)
    return loss
