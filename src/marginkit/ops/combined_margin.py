r"""The combined margin on the logits: ``torch.ops.marginkit.combined_margin_{fwd,bwd}``.

OneFlow's ``combined_margin_loss`` (``nn.CombinedMarginLoss``): the target cosine of each row is
replaced by :math:`\phi(x) = \cos(m_1 \arccos x + m_2) - m_3`, every other logit is copied, nothing
is scaled. The output is a new N×C tensor (that is its purpose); use
:func:`marginkit.ops.margin_cross_entropy` when the next step is a softmax cross-entropy, which
never materialises the modified logits.

The margin is the one copy in :mod:`marginkit.ops._margin`, evaluated on the N target cosines
with its slope :math:`\phi'` from forward-mode autograd (``torch.func.jvp``, which
``torch.compile`` traces). The N×C work is two custom ops: ``target_cosine`` checks the label
range (one host read) and gathers the N target cosines; ``combined_margin_fwd`` copies the
logits and writes the N margin values, its backward (``combined_margin_bwd``) copies the
incoming gradient and multiplies its N target entries by :math:`\phi'`. One N×C allocation each
way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from marginkit._validation import (
    check_arcface_fallback,
    check_ignore_index,
    check_logits_and_label,
    check_margins,
    check_option,
)
from marginkit.ops._dtypes import accumulation_dtype
from marginkit.ops._margin import GRAD_MODES, MARGIN_FALLBACKS, combined_margin_of_cosines
from marginkit.ops._targets import gather_target, local_target_column

__all__ = ["combined_margin"]


@torch.library.custom_op("marginkit::target_cosine", mutates_args=())
def target_cosine(logits: Tensor, label: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """``(cos_target, target_col)``: the N target cosines (0 for ignored rows) and columns (-1).

    Checks the label range (``ValueError``). Not differentiable.
    """
    target_col = local_target_column(label, ignore_index, logits.shape[1], group_name="")
    return gather_target(logits, target_col, accumulation_dtype(logits.dtype)), target_col


@target_cosine.register_fake
def _target_cosine_fake(logits: Tensor, label: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    n_rows = logits.shape[0]
    torch._check(label.shape[0] == n_rows)
    return (
        logits.new_empty(n_rows, dtype=accumulation_dtype(logits.dtype)),
        logits.new_empty(n_rows, dtype=torch.int64),
    )


@torch.library.custom_op("marginkit::combined_margin_fwd", mutates_args=())
def combined_margin_fwd(logits: Tensor, target_col: Tensor, phi: Tensor, dphi: Tensor) -> Tensor:
    """Copy ``logits`` and write ``phi`` at each row's target column (rows with ``-1``: none)."""
    out = logits.new_empty(logits.shape).copy_(logits)
    rows = (target_col >= 0).nonzero()[:, 0]
    out[rows, target_col[rows]] = phi[rows].to(out.dtype)
    return out


@combined_margin_fwd.register_fake
def _combined_margin_fwd_fake(
    logits: Tensor, target_col: Tensor, phi: Tensor, dphi: Tensor
) -> Tensor:
    return logits.new_empty(logits.shape)


@torch.library.custom_op("marginkit::combined_margin_bwd", mutates_args=())
def combined_margin_bwd(grad_out: Tensor, target_col: Tensor, dphi: Tensor) -> Tensor:
    """Copy ``grad_out`` and multiply each row's target entry by ``dphi`` (no clamp: inf stays)."""
    grad = grad_out.new_empty(grad_out.shape).copy_(grad_out)
    rows = (target_col >= 0).nonzero()[:, 0]
    cols = target_col[rows]
    grad[rows, cols] = (grad[rows, cols].to(dphi.dtype) * dphi[rows]).to(grad.dtype)
    return grad


@combined_margin_bwd.register_fake
def _combined_margin_bwd_fake(grad_out: Tensor, target_col: Tensor, dphi: Tensor) -> Tensor:
    return grad_out.new_empty(grad_out.shape)


def _setup_context(ctx, inputs, output) -> None:
    _logits, target_col, _phi, dphi = inputs
    ctx.save_for_backward(target_col, dphi)


def _backward(ctx, grad_out):
    target_col, dphi = ctx.saved_tensors
    grad_logits = None
    if ctx.needs_input_grad[0]:
        grad_logits = combined_margin_bwd(grad_out, target_col, dphi)
    return grad_logits, None, None, None


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
        margin_fallback: ``"none"``, ``"arcface"``, ``"easy"`` or ``"monotonic"`` (as
            :func:`marginkit.ops.margin_cross_entropy`).
        grad_mode: ``"exact"`` or ``"straight_through"`` (as
            :func:`marginkit.ops.margin_cross_entropy`).
        ignore_index: label value of rows left unchanged.

    Returns:
        ``(N, C)`` tensor like ``logits`` (contiguous).

    Raises:
        TypeError: a non-tensor ``logits`` / ``label``, a non-number margin, a non-int
            ``ignore_index``, a non-string option.
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
    check_arcface_fallback(margin_fallback, m1)
    check_option("grad_mode", grad_mode, GRAD_MODES)
    check_ignore_index(ignore_index)
    cos_target, target_col = target_cosine(logits.detach(), label, ignore_index)
    phi, dphi = torch.func.jvp(
        lambda cos: combined_margin_of_cosines(cos, m1, m2, m3, margin_fallback, grad_mode),
        (cos_target,),
        (torch.ones_like(cos_target),),
    )
    return combined_margin_fwd(logits, target_col, phi, dphi)
