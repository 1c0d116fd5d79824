r"""The fused margin softmax cross-entropy: ``torch.ops.marginkit.margin_cross_entropy_{fwd,bwd}``.

Forward (per row :math:`i`, target :math:`t_i`, scale :math:`s`):

.. math::
    R_i = \log \sum_{j \ne t_i} e^{s x_{ij}}, \quad
    \phi_i = \cos(m_1 \arccos x_{i t_i} + m_2) - m_3, \quad
    \ell_i = \log(e^{s\phi_i} + e^{R_i}) - s\phi_i = \operatorname{softplus}(R_i - s\phi_i).

The N×C kernel (:func:`~marginkit.ops._cpu.row_logsumexp_excluding_target` or its Triton twin)
computes :math:`R`; the margin arithmetic (:func:`~marginkit.ops._margin.margin_target`) runs on
the N-length target cosines. The forward saves N-length statistics only: the row log-sum-exp
:math:`L_i = s\phi_i + \ell_i`, the per-row factors of the gradient and the target columns.

Backward, with :math:`g_i = \partial \mathcal{L} / \partial \ell_i` and
:math:`p_{ij} = e^{s x_{ij} - L_i}`, one pass writes

.. math::
    \frac{\partial \mathcal{L}}{\partial x_{ij}} = g_i\, s\, p_{ij} \ (j \ne t_i), \qquad
    \frac{\partial \mathcal{L}}{\partial x_{i t_i}} = g_i\, s\,(p_{i t_i} - 1)\, \phi'(x_{i t_i}),
    \quad p_{i t_i} = e^{s\phi_i - L_i} = e^{-\ell_i}.

The kernels take the process group by name and do their N-length all-reduces inside, so the ops
stay opaque to ``torch.compile``. See ``docs/ops.md`` for the derivation and memory accounting.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from marginkit.ops._backends import kernels_for
from marginkit.ops._distributed import (
    class_shard_offset,
    combine_row_logsumexp,
    group_name,
    resolve_group,
)
from marginkit.ops._dtypes import accumulation_dtype
from marginkit.ops._margin import GRAD_MODES, MARGIN_FALLBACKS, margin_target
from marginkit.ops._validation import (
    IMPLS,
    REDUCTIONS,
    check_finite_number,
    check_ignore_index,
    check_label_range,
    check_logits_and_label,
    check_margins,
    check_option,
)

__all__ = ["margin_cross_entropy"]


# ---------------------------------------------------------------------------------------------
# Forward op
# ---------------------------------------------------------------------------------------------


def _forward(
    logits: Tensor,
    label: Tensor,
    margin1: float,
    margin2: float,
    margin3: float,
    scale: float,
    margin_fallback: str,
    grad_mode: str,
    ignore_index: int,
    return_softmax: bool,
    group_name: str,
    impl: str | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-row margin cross-entropy and the N-length statistics its backward needs.

    Inputs are trusted (the public wrapper checks them), except the label range, which is data
    dependent and checked here (``ValueError``).

    Returns:
        ``(loss, lse, target_grad, row_grad, target_col, softmax)``: ``loss`` ``(N,)`` (0 for
        ignored rows); ``lse`` ``(N,)`` the row log-sum-exp with the margin logit; per-row
        gradient factors ``target_grad = s (p_t - 1) φ'`` (0 where this rank has no target)
        and ``row_grad = s`` (0 for ignored rows); ``target_col`` ``(N,)`` int64 local target
        column (-1 where none); ``softmax`` ``(N, C)`` in the logits' dtype when
        ``return_softmax`` else an empty tensor. Vectors have the accumulation dtype.
    """
    kernels = kernels_for(logits.device.type, impl)
    acc_dtype = accumulation_dtype(logits.dtype)
    n_rows, n_cols = logits.shape
    label = label.long()
    valid = label != ignore_index
    group = resolve_group(group_name)
    if group is None:
        offset, num_classes = 0, n_cols
    else:
        offset, num_classes = class_shard_offset(n_cols, group, logits.device)
    check_label_range(label, valid, num_classes, ignore_index)

    local_label = label - offset
    owned = valid & (local_label >= 0) & (local_label < n_cols)
    target_col = torch.where(owned, local_label, torch.full_like(local_label, -1))
    cos_target = torch.zeros(n_rows, dtype=acc_dtype, device=logits.device)
    if n_cols > 0:
        gathered = logits.gather(1, target_col.clamp(min=0)[:, None])[:, 0].to(acc_dtype)
        cos_target = torch.where(owned, gathered, cos_target)

    lse_rest = kernels.row_logsumexp_excluding_target(logits, target_col, scale)
    if group is not None:
        lse_rest, cos_target = combine_row_logsumexp(lse_rest, cos_target, group)

    # The margin runs on N values only: do it in float64, whatever the logits' dtype, so that
    # the 1/sin θ of the derivative does not amplify float32 rounding of θ near ±1.
    phi, dphi = margin_target(
        cos_target.double(), margin1, margin2, margin3, margin_fallback, grad_mode
    )
    phi, dphi = phi.to(acc_dtype), dphi.to(acc_dtype)
    target_logit = scale * phi
    # ℓ = log(e^{sφ} + e^R) − sφ = softplus(R − sφ) = max(d, 0) + log1p(e^{−|d|}), exact for
    # tiny losses (no cancellation of two numbers near sφ) and 0 when R = −inf.
    gap = lse_rest - target_logit
    loss = gap.clamp(min=0) + torch.log1p(torch.exp(-gap.abs()))
    zeros = torch.zeros_like(loss)
    loss = torch.where(valid, loss, zeros)
    lse = torch.where(valid, target_logit + loss, lse_rest)
    # p_t − 1 = e^{−ℓ} − 1 = expm1(−ℓ), accurate when p_t is close to 1.
    target_grad = torch.where(owned, scale * torch.expm1(-loss) * dphi, zeros)
    row_grad = torch.where(valid, torch.full_like(loss, scale), zeros)

    if return_softmax:
        softmax = kernels.write_row_softmax(
            logits,
            target_col,
            lse,
            torch.ones_like(loss),
            torch.exp(-loss),
            scale,
            logits.new_empty(logits.shape),
        )
    else:
        softmax = logits.new_empty(0)
    return loss, lse, target_grad, row_grad, target_col, softmax


margin_cross_entropy_fwd = torch.library.custom_op(
    "marginkit::margin_cross_entropy_fwd", mutates_args=(), device_types="cpu"
)(_forward)
margin_cross_entropy_fwd.register_kernel("cuda")(_forward)


@margin_cross_entropy_fwd.register_fake
def _margin_cross_entropy_fwd_fake(
    logits: Tensor,
    label: Tensor,
    margin1: float,
    margin2: float,
    margin3: float,
    scale: float,
    margin_fallback: str,
    grad_mode: str,
    ignore_index: int,
    return_softmax: bool,
    group_name: str,
    impl: str | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    n_rows = logits.shape[0]
    torch._check(label.shape[0] == n_rows)
    acc_dtype = accumulation_dtype(logits.dtype)
    vectors = [logits.new_empty(n_rows, dtype=acc_dtype) for _ in range(4)]
    target_col = logits.new_empty(n_rows, dtype=torch.int64)
    softmax = logits.new_empty(logits.shape) if return_softmax else logits.new_empty(0)
    return (*vectors, target_col, softmax)


# ---------------------------------------------------------------------------------------------
# Backward op
# ---------------------------------------------------------------------------------------------


def _backward_kernel(
    grad_loss: Tensor,
    logits: Tensor,
    target_col: Tensor,
    lse: Tensor,
    target_grad: Tensor,
    row_grad: Tensor,
    scale: float,
    impl: str | None,
) -> Tensor:
    """Gradient of the per-row loss with respect to ``logits``, written in one pass.

    ``grad[i, j] = g_i · row_grad_i · exp(s x_ij − lse_i)`` off target and
    ``g_i · target_grad_i`` at the target column, in the logits' dtype saturated to its finite
    range. The only N×C allocation of a forward plus backward.
    """
    kernels = kernels_for(logits.device.type, impl)
    grad_loss = grad_loss.to(lse.dtype)
    return kernels.write_row_softmax(
        logits,
        target_col,
        lse,
        grad_loss * row_grad,
        grad_loss * target_grad,
        scale,
        logits.new_empty(logits.shape),
    )


margin_cross_entropy_bwd = torch.library.custom_op(
    "marginkit::margin_cross_entropy_bwd", mutates_args=(), device_types="cpu"
)(_backward_kernel)
margin_cross_entropy_bwd.register_kernel("cuda")(_backward_kernel)


@margin_cross_entropy_bwd.register_fake
def _margin_cross_entropy_bwd_fake(
    grad_loss: Tensor,
    logits: Tensor,
    target_col: Tensor,
    lse: Tensor,
    target_grad: Tensor,
    row_grad: Tensor,
    scale: float,
    impl: str | None,
) -> Tensor:
    return logits.new_empty(logits.shape)


def _setup_context(ctx, inputs, output) -> None:
    logits, scale, impl = inputs[0], inputs[5], inputs[11]
    _loss, lse, target_grad, row_grad, target_col, softmax = output
    ctx.save_for_backward(logits, target_col, lse, target_grad, row_grad)
    ctx.scale = scale
    ctx.impl = impl
    ctx.mark_non_differentiable(lse, target_grad, row_grad, target_col, softmax)


def _backward(ctx, grad_loss, *_unused_grads):
    logits, target_col, lse, target_grad, row_grad = ctx.saved_tensors
    grad_logits = None
    if ctx.needs_input_grad[0] and grad_loss is not None:
        grad_logits = margin_cross_entropy_bwd(
            grad_loss, logits, target_col, lse, target_grad, row_grad, ctx.scale, ctx.impl
        )
    return (grad_logits, *([None] * 11))


margin_cross_entropy_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# Public wrapper
# ---------------------------------------------------------------------------------------------


def margin_cross_entropy(
    logits: Tensor,
    label: Tensor,
    margin1: float = 1.0,
    margin2: float = 0.5,
    margin3: float = 0.0,
    scale: float = 64.0,
    group: dist.ProcessGroup | None = None,
    return_softmax: bool = False,
    reduction: str = "mean",
    *,
    margin_fallback: str = "none",
    grad_mode: str = "exact",
    ignore_index: int = -100,
    impl: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Softmax cross-entropy of scaled cosines with a combined margin on the target, fused.

    .. math::
        \ell_i = -\log \frac{e^{s\,\phi(x_{i y_i})}}
        {e^{s\,\phi(x_{i y_i})} + \sum_{j \ne y_i} e^{s\,x_{ij}}},
        \qquad \phi(x) = \cos(m_1 \arccos x + m_2) - m_3

    with :math:`s` = ``scale`` and :math:`(m_1, m_2, m_3)` = ``(margin1, margin2, margin3)``:
    ArcFace is ``(1, m, 0)``, CosFace / AM-Softmax ``(1, 0, m)``, SphereFace-style ``(m, 0, 0)``
    (``m > 1``), insightface's combined margin all three. One N×C pass computes the row
    log-sum-exp without the target column; the margin is applied to the N target cosines only;
    the backward writes the gradient in one more pass. The forward keeps N-length statistics,
    not the softmax, and forward plus backward allocate one N×C buffer (the gradient).

    Computation happens in float32 for float16 / bfloat16 / float32 logits and in float64 for
    float64 logits; the loss has that dtype, the softmax and the gradient the logits' dtype
    (saturated to its finite range: never ``inf`` in float16). Cosines of exactly ±1 are fine:
    :math:`\phi'` uses :math:`\sin\theta` floored at ``1e-3``.

    Args:
        logits: ``(N, C)`` cosine similarities (normalised embeddings × normalised class
            weights), float16 / bfloat16 / float32 / float64. Under ``group``: this rank's
            shard of the classes.
        label: ``(N,)`` or ``(N, 1)`` integer class ids in ``[0, C)`` (under ``group``: global
            ids in ``[0, ΣC_r)``), or ``ignore_index``.
        margin1: multiplicative angular margin :math:`m_1 > 0`.
        margin2: additive angular margin :math:`m_2` in radians.
        margin3: additive cosine margin :math:`m_3`.
        scale: logit scale :math:`s > 0`.
        group: a ``torch.distributed`` process group for model parallelism: rank ``r`` holds
            the classes after those of ranks ``< r`` (shards may be uneven) and every rank holds
            the same ``N`` rows and labels. Every rank gets the same loss, its own softmax
            shard and the gradient of its shard; only N-length vectors cross the network (an
            all-gather of one int per rank, an all-reduce MAX and an all-reduce SUM of
            N-vectors). ``None``: single process.
        return_softmax: also return the softmax (with the margin logit in the target column),
            shaped and typed like ``logits``. No gradient flows through it.
        reduction: ``"mean"`` (over the rows whose label is not ``ignore_index``; 0 with zero
            gradient when every row is ignored), ``"sum"`` or ``"none"`` (shape ``(N,)``,
            0 for ignored rows).
        margin_fallback: where the margin formula is replaced (there :math:`\phi' = 1`):
            ``"none"`` never (Paddle / OneFlow); ``"arcface"`` where
            :math:`m_1\theta + m_2 > \pi` by the monotonic continuation
            :math:`x - m_2 \sin m_2 - m_3` (insightface's ``ArcMarginProduct``,
            ``easy_margin=False``); ``"easy"`` where :math:`x \le 0` by :math:`\phi(x) = x`.
        grad_mode: ``"exact"``: the true derivative
            :math:`\phi'(x) = m_1 \sin(m_1\theta + m_2) / \sin\theta` (finite at ±1 thanks to
            the floor); ``"straight_through"``: :math:`\phi'(x) = 1`, the margin shifts the
            value but not the gradient (insightface's arcface_torch).
        ignore_index: label value of rows that contribute nothing (and are not counted by
            ``"mean"``).
        impl: ``None`` picks by device (chunked torch on the CPU, Triton on CUDA when
            installed); ``"torch"`` forces the chunked-torch kernels; ``"triton"`` the Triton
            kernels, on CPU tensors only with ``TRITON_INTERPRET=1``.

    Returns:
        The loss (scalar, or ``(N,)`` for ``reduction="none"``); with ``return_softmax``,
        ``(loss, softmax)``.

    Raises:
        ValueError: on a label outside the valid range that is not ``ignore_index`` (the message
            names the label, its row and the range), a label/logit batch mismatch, non-integer
            labels, unknown ``reduction`` / ``margin_fallback`` / ``grad_mode`` / ``impl``, a
            non-positive or non-finite ``scale``, a non-finite margin or ``margin1 <= 0``.

    Validation cost: everything but the label range is checked from metadata in Python (no
    device work, traced away by ``torch.compile``). The label range is checked inside the op:
    O(N) comparisons and one device-to-host read of one boolean (a sync on CUDA).

    Example:
        >>> import torch, torch.nn.functional as F
        >>> embeddings = F.normalize(torch.randn(4, 8), dim=1)
        >>> class_weights = F.normalize(torch.randn(10, 8), dim=1)
        >>> cosines = (embeddings @ class_weights.T).requires_grad_()
        >>> loss = margin_cross_entropy(cosines, torch.tensor([0, 3, 9, 2]), scale=16.0)
        >>> loss.backward()
        >>> loss.shape, cosines.grad.shape
        (torch.Size([]), torch.Size([4, 10]))
    """
    label = check_logits_and_label(logits, label)
    margin1, margin2, margin3 = check_margins(
        margin1, margin2, margin3, ("margin1", "margin2", "margin3")
    )
    scale = check_finite_number("scale", scale, positive=True)
    check_option("reduction", reduction, REDUCTIONS)
    check_option("margin_fallback", margin_fallback, MARGIN_FALLBACKS)
    check_option("grad_mode", grad_mode, GRAD_MODES)
    check_option("impl", impl, IMPLS)
    check_ignore_index(ignore_index)
    if not isinstance(return_softmax, bool):
        raise ValueError(f"`return_softmax` must be a bool, got {type(return_softmax).__name__}")
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise ValueError(
            f"`group` must be a torch.distributed ProcessGroup or None, got {type(group).__name__}"
        )

    loss, _lse, _target_grad, _row_grad, _target_col, softmax = margin_cross_entropy_fwd(
        logits,
        label,
        margin1,
        margin2,
        margin3,
        scale,
        margin_fallback,
        grad_mode,
        ignore_index,
        return_softmax,
        group_name(group),
        impl,
    )
    loss = reduce_rows(loss, label, ignore_index, reduction)
    return (loss, softmax) if return_softmax else loss


def reduce_rows(loss: Tensor, label: Tensor, ignore_index: int, reduction: str) -> Tensor:
    """Reduce per-row losses; ``"mean"`` divides by the number of non-ignored rows (at least 1)."""
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    return total / (label != ignore_index).sum().clamp(min=1)
