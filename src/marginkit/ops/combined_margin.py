r"""The combined margin on the logits: ``torch.ops.marginkit.combined_margin_{fwd,bwd}``.

OneFlow's ``combined_margin_loss`` (``nn.CombinedMarginLoss``): the target cosine of each row is
replaced by :math:`\phi(x) = \cos(m_1 \arccos x + m_2) - m_3`, every other logit is copied, nothing
is scaled. The output is a new N×C tensor (that is its purpose); use
:func:`marginkit.ops.margin_cross_entropy` when the next step is a softmax cross-entropy, which
never materialises the modified logits.

Both directions are custom ops: the forward copies the logits and writes N margin values, the
backward copies the incoming gradient and multiplies its N target entries by :math:`\phi'`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from marginkit.ops._dtypes import accumulation_dtype
from marginkit.ops._margin import GRAD_MODES, MARGIN_FALLBACKS, margin_target
from marginkit.ops._validation import (
    check_ignore_index,
    check_label_range,
    check_logits_and_label,
    check_margins,
    check_option,
)

__all__ = ["combined_margin"]


@torch.library.custom_op("marginkit::combined_margin_fwd", mutates_args=())
def combined_margin_fwd(
    logits: Tensor,
    label: Tensor,
    m1: float,
    m2: float,
    m3: float,
    margin_fallback: str,
    grad_mode: str,
    ignore_index: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(margin_logits, target_col, dphi)``; checks the label range (``ValueError``).

    ``target_col`` is the int64 target column per row (-1 for ignored rows) and ``dphi`` the
    accumulation-dtype derivative of the margin at each row's target (0 for ignored rows).
    """
    n_rows, n_cols = logits.shape
    acc_dtype = accumulation_dtype(logits.dtype)
    label = label.long()
    valid = label != ignore_index
    check_label_range(label, valid, n_cols, ignore_index)
    target_col = torch.where(valid, label, torch.full_like(label, -1))
    out = logits.new_empty(logits.shape).copy_(logits)
    dphi = torch.zeros(n_rows, dtype=acc_dtype, device=logits.device)
    rows = valid.nonzero()[:, 0]
    cols = label[rows]
    # N values only: computed in float64 (see margin_cross_entropy_fwd).
    phi, dphi_rows = margin_target(
        logits[rows, cols].double(), m1, m2, m3, margin_fallback, grad_mode
    )
    out[rows, cols] = phi.to(out.dtype)
    dphi[rows] = dphi_rows.to(acc_dtype)
    return out, target_col, dphi


@combined_margin_fwd.register_fake
def _combined_margin_fwd_fake(
    logits: Tensor,
    label: Tensor,
    m1: float,
    m2: float,
    m3: float,
    margin_fallback: str,
    grad_mode: str,
    ignore_index: int,
) -> tuple[Tensor, Tensor, Tensor]:
    n_rows = logits.shape[0]
    torch._check(label.shape[0] == n_rows)
    return (
        logits.new_empty(logits.shape),
        logits.new_empty(n_rows, dtype=torch.int64),
        logits.new_empty(n_rows, dtype=accumulation_dtype(logits.dtype)),
    )


@torch.library.custom_op("marginkit::combined_margin_bwd", mutates_args=())
def combined_margin_bwd(grad_out: Tensor, target_col: Tensor, dphi: Tensor) -> Tensor:
    """Copy ``grad_out`` and multiply each row's target entry by ``dphi`` (saturating)."""
    grad = grad_out.new_empty(grad_out.shape).copy_(grad_out)
    rows = (target_col >= 0).nonzero()[:, 0]
    cols = target_col[rows]
    finite_max = torch.finfo(grad.dtype).max
    target = grad[rows, cols].to(dphi.dtype) * dphi[rows]
    grad[rows, cols] = target.clamp(-finite_max, finite_max).to(grad.dtype)
    return grad


@combined_margin_bwd.register_fake
def _combined_margin_bwd_fake(grad_out: Tensor, target_col: Tensor, dphi: Tensor) -> Tensor:
    return grad_out.new_empty(grad_out.shape)


def _setup_context(ctx, inputs, output) -> None:
    _out, target_col, dphi = output
    ctx.save_for_backward(target_col, dphi)
    ctx.mark_non_differentiable(target_col, dphi)


def _backward(ctx, grad_out, *_unused_grads):
    target_col, dphi = ctx.saved_tensors
    grad_logits = None
    if ctx.needs_input_grad[0] and grad_out is not None:
        grad_logits = combined_margin_bwd(grad_out, target_col, dphi)
    return (grad_logits, *([None] * 7))


combined_margin_fwd.register_autograd(_backward, setup_context=_setup_context)


def combined_margin(
    logits: Tensor,
    label: Tensor,
    m1: float = 1.0,
    m2: float = 0.0,
    m3: float = 0.0,
    *,
    margin_fallback: str = "none",
    grad_mode: str = "exact",
    ignore_index: int = -100,
) -> Tensor:
    r"""Return the logits with each row's target cosine replaced by its combined margin (unscaled).

    .. math::
        y_{ij} = \begin{cases} \cos(m_1 \arccos x_{ij} + m_2) - m_3 & j = t_i \\
        x_{ij} & j \ne t_i \end{cases}

    OneFlow's ``combined_margin_loss`` semantics (multiply by the scale and apply a softmax
    cross-entropy afterwards). Rows whose label is ``ignore_index`` are copied unchanged. The
    gradient at the target is :math:`\phi'(x)` (see ``grad_mode``), elsewhere 1. Computation
    happens in float32 (float64 for float64 logits); the output has the logits' dtype.

    Args:
        logits: ``(N, C)`` cosines, float16 / bfloat16 / float32 / float64.
        label: ``(N,)`` or ``(N, 1)`` integer class ids in ``[0, C)`` or ``ignore_index``.
        m1: multiplicative angular margin, ``m1 > 0``.
        m2: additive angular margin in radians.
        m3: additive cosine margin.
        margin_fallback: ``"none"``, ``"arcface"`` or ``"easy"`` (as
            :func:`marginkit.ops.margin_cross_entropy`).
        grad_mode: ``"exact"`` or ``"straight_through"`` (as
            :func:`marginkit.ops.margin_cross_entropy`).
        ignore_index: label value of rows left unchanged.

    Returns:
        ``(N, C)`` tensor like ``logits`` (contiguous).

    Raises:
        ValueError: on a label outside ``[0, C)`` that is not ``ignore_index`` (label, row and
            range named), a batch mismatch, non-integer labels, a non-finite margin or
            ``m1 <= 0``, an unknown ``margin_fallback`` / ``grad_mode``.

    Example:
        >>> import math, torch
        >>> x = torch.tensor([[0.0, 0.5], [1.0, 0.0]], dtype=torch.float64)
        >>> y = combined_margin(x, torch.tensor([0, 1]), m2=0.5)
        >>> torch.allclose(y[:, 0], torch.tensor([math.cos(math.pi / 2 + 0.5), 1.0], dtype=x.dtype))
        True
    """
    label = check_logits_and_label(logits, label)
    m1, m2, m3 = check_margins(m1, m2, m3, ("m1", "m2", "m3"))
    check_option("margin_fallback", margin_fallback, MARGIN_FALLBACKS)
    check_option("grad_mode", grad_mode, GRAD_MODES)
    check_ignore_index(ignore_index)
    out, _target_col, _dphi = combined_margin_fwd(
        logits, label, m1, m2, m3, margin_fallback, grad_mode, ignore_index
    )
    return out
