r"""The fused margin softmax cross-entropy on cosines (Paddle's ``margin_cross_entropy``).

Built on the margin-agnostic op :func:`~marginkit.ops.target_logsumexp` and the margin maths of
:mod:`marginkit.ops._margin` (per row :math:`i`, target :math:`t_i`, scale :math:`s`):

.. math::
    R_i = \log \sum_{j \ne t_i} e^{s x_{ij}}, \quad c_i = x_{i t_i}, \quad
    \phi_i = \cos(m_1 \arccos c_i + m_2) - m_3, \quad
    \ell_i = \operatorname{softplus}(R_i - s\phi_i).

The N×C work (:math:`R` and :math:`c`) is one pass of the op; :math:`\phi` and :math:`\ell` are
plain differentiable torch on N-vectors (:func:`~marginkit.ops._margin.arccos_floored`,
:func:`~marginkit.ops._margin.combined_margin_logit`,
:func:`~marginkit.ops._margin.margin_softmax_loss`), and autograd carries their gradient into
the op's backward, which writes the one N×C gradient

.. math::
    \frac{\partial \mathcal{L}}{\partial x_{ij}} = g^R_i\, s\, e^{s x_{ij} - R_i} \ (j \ne t_i),
    \qquad \frac{\partial \mathcal{L}}{\partial x_{i t_i}} = g^c_i,

with :math:`g^R_i = g_i \sigma(R_i - s\phi_i)` and :math:`g^c_i = -g_i\, s\, \sigma(R_i - s\phi_i)
\,\phi'(c_i)`. See ``docs/ops.md``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from marginkit._validation import (
    IMPLS,
    REDUCTIONS,
    check_arcface_fallback,
    check_bool,
    check_finite_number,
    check_ignore_index,
    check_logits_and_label,
    check_margins,
    check_option,
    check_process_group,
)
from marginkit.ops._distributed import group_name
from marginkit.ops._margin import (
    GRAD_MODES,
    MARGIN_FALLBACKS,
    combined_margin_of_cosines,
    margin_softmax_loss,
)
from marginkit.ops.target_logsumexp import target_logsumexp_bwd, target_logsumexp_fwd

__all__ = ["margin_cross_entropy"]


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
    ArcFace is ``(1, m, 0)``, CosFace / AM-Softmax ``(1, 0, m)``, insightface's combined margin
    all three. ``(m, 0, 0)`` is Paddle's pure formula, which is **not** SphereFace: without a
    fallback it is not monotonic in θ for ``m > 1`` (the loss can reward moving away from the
    class); SphereFace's piecewise :math:`\psi(\theta) = (-1)^k \cos(m\theta) - 2k` is
    ``margin_fallback="monotonic"`` (or :class:`marginkit.losses.SphereFaceLoss`).

    One N×C pass (:func:`~marginkit.ops.target_logsumexp`) computes the row log-sum-exp without
    the target column and the target cosine; the margin is plain differentiable torch on the N
    target cosines; the backward writes the gradient in one more pass. The forward keeps
    N-length vectors, not the softmax, and forward plus backward allocate one N×C buffer (the
    gradient).

    Computation happens in float32 for float16 / bfloat16 / float32 logits and in float64 for
    float64 logits (the margin itself in float64); the loss has that dtype, the softmax and the
    gradient the logits' dtype. Nothing is clamped: a gradient past the float16 range is
    ``inf``, as with ``F.cross_entropy``, so a ``GradScaler`` sees it and backs off. Cosines of
    exactly ±1 are fine: :math:`\phi'` uses :math:`\sin\theta` floored at ``1e-3``.

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
            ``easy_margin=False``); ``"easy"`` where :math:`x \le 0` by :math:`\phi(x) = x`;
            ``"monotonic"`` everywhere by SphereFace's piecewise
            :math:`(-1)^k \cos(m_1\theta + m_2) - 2k - m_3`,
            :math:`k = \lfloor (m_1\theta + m_2)/\pi \rfloor` (continuous and decreasing).
        grad_mode: ``"exact"``: the true derivative
            :math:`\phi'(x) = m_1 \sin(m_1\theta + m_2) / \sin\theta` (finite at ±1 thanks to
            the floor); ``"straight_through"``: :math:`\phi'(x) = 1`, the margin shifts the
            value but not the gradient (insightface's arcface_torch).
        ignore_index: label value of rows that contribute nothing (and are not counted by
            ``"mean"``).
        impl: test hook. ``None``: the kernel torch's dispatcher registered for the device
            (chunked torch on the CPU, Triton on CUDA when installed); ``"torch"`` forces the
            chunked-torch kernels; ``"triton"`` the Triton kernels, on CPU tensors only with
            ``TRITON_INTERPRET=1``.

    Returns:
        The loss (scalar, or ``(N,)`` for ``reduction="none"``); with ``return_softmax``,
        ``(loss, softmax)``.

    Raises:
        TypeError: a non-tensor ``logits`` / ``label``, a non-number ``scale`` or margin, a
            non-int ``ignore_index``, a non-bool ``return_softmax``, a ``group`` that is not a
            process group, a non-string option.
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
    check_process_group(group)
    check_bool("return_softmax", return_softmax)
    check_option("reduction", reduction, REDUCTIONS)
    check_option("margin_fallback", margin_fallback, MARGIN_FALLBACKS)
    check_arcface_fallback(margin_fallback, margin1, "margin1")
    check_option("grad_mode", grad_mode, GRAD_MODES)
    check_ignore_index(ignore_index)
    check_option("impl", impl, IMPLS)

    lse_rest, cos_target, _row_sum, target_col = target_logsumexp_fwd(
        logits, label, scale, ignore_index, False, None, None, group_name(group), impl
    )
    phi = combined_margin_of_cosines(
        cos_target, margin1, margin2, margin3, margin_fallback, grad_mode
    )
    target_logit = scale * phi
    valid = label != ignore_index
    loss = torch.where(valid, margin_softmax_loss(lse_rest, target_logit), 0.0)
    softmax = None
    if return_softmax:
        softmax = _softmax(logits, target_col, lse_rest, target_logit, loss, valid, scale, impl)
    loss = reduce_rows(loss, label, ignore_index, reduction)
    return (loss, softmax) if return_softmax else loss


def _softmax(
    logits: Tensor,
    target_col: Tensor,
    lse_rest: Tensor,
    target_logit: Tensor,
    loss: Tensor,
    valid: Tensor,
    scale: float,
    impl: str | None,
) -> Tensor:
    r"""The softmax with the margin logit at the target, written by the op's N×C writer.

    With :math:`L = s\phi + \ell` the full row log-sum-exp, off target
    :math:`e^{s x - L} = e^{s x - R} \cdot e^{R - L}` and at the target :math:`e^{-\ell}`;
    ignored rows are the plain softmax of :math:`s x` (:math:`L = R`). Not differentiable.
    """
    with torch.no_grad():
        full_lse = target_logit + loss
        row_coef = torch.where(valid, torch.exp(lse_rest - full_lse), 1.0)
        return target_logsumexp_bwd(
            logits.detach(),
            target_col,
            lse_rest.detach(),
            row_coef,
            torch.exp(-loss),
            None,
            None,
            None,
            scale,
            impl,
        )


def reduce_rows(loss: Tensor, label: Tensor, ignore_index: int, reduction: str) -> Tensor:
    """Reduce per-row losses; ``"mean"`` divides by the number of non-ignored rows (at least 1)."""
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    return total / (label != ignore_index).sum().clamp(min=1)
