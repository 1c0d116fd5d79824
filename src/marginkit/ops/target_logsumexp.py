r"""The margin-agnostic N×C work of every softmax head: ``torch.ops.marginkit.target_logsumexp_{fwd,bwd}``.

For cosines :math:`x` ``(N, C)``, a target column :math:`t_i` per row and a scale :math:`s`,

.. math::
    R_i = \log \sum_{j \ne t_i} e^{s x_{ij}}, \qquad c_i = x_{i t_i}, \qquad
    S_i = \sum_{j \ne t_i,\ \kappa(j) = \rho_i} x_{ij}

(:math:`S` only when asked: the row sum of the non-target cosines, restricted to the columns
whose category :math:`\kappa(j)` equals the row's category :math:`\rho_i` when categories are
given). All three are differentiable; the backward writes the one N×C gradient

.. math::
    \frac{\partial\mathcal L}{\partial x_{ij}} = g^R_i\, s\, e^{s x_{ij} - R_i}
    + g^S_i [\kappa(j) = \rho_i] \ (j \ne t_i), \qquad
    \frac{\partial\mathcal L}{\partial x_{i t_i}} = g^c_i .

A head's loss is then ``margin_softmax_loss(R, s·φ(c, …))`` with φ any differentiable function
of N-vectors: the N×C kernels never see the margin.

The forward op makes one pass over the cosines (chunked torch, :mod:`marginkit.ops._cpu`, or
Triton, :mod:`marginkit.ops._triton`, chosen by the kernel torch's dispatcher registers for the
device) and saves the cosines (by reference) and N-vectors only; the backward op writes the
gradient in one more pass, the only N×C allocation of a forward plus backward. Under a process
group (classes sharded over the ranks) only N-length vectors are all-reduced
(:mod:`marginkit.ops._distributed`). See ``docs/ops.md``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from marginkit._validation import (
    IMPLS,
    check_bool,
    check_categories,
    check_finite_number,
    check_ignore_index,
    check_logits_and_label,
    check_option,
    check_process_group,
)
from marginkit.ops._backends import BackendPicker, custom_op_per_device
from marginkit.ops._distributed import combine_row_statistics, group_name, resolve_group
from marginkit.ops._dtypes import accumulation_dtype
from marginkit.ops._targets import gather_target, local_target_column

__all__ = ["TargetLogSumExp", "target_logsumexp"]


class TargetLogSumExp(NamedTuple):
    """What :func:`target_logsumexp` returns: N-vectors in the accumulation dtype."""

    lse_rest: Tensor
    cos_target: Tensor
    row_sum: Tensor | None


# ---------------------------------------------------------------------------------------------
# The forward op: one N×C pass (chunked torch or Triton), N-length all-reduces under a group
# ---------------------------------------------------------------------------------------------


def _forward_kernel(pick_backend: BackendPicker):
    """The forward op's kernel for one device; ``pick_backend(device_type, impl)`` picks the N×C ones."""

    def forward(
        cosines: Tensor,
        label: Tensor,
        scale: float,
        ignore_index: int,
        row_sum: bool,
        column_category: Tensor | None,
        row_category: Tensor | None,
        group_name: str,
        impl: str | None,
        check_labels: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(lse_rest, cos_target, row_sum or empty, target_col)``; checks the label range.

        ``target_col`` is the int64 local target column of each row, -1 where this rank has
        none (ignored rows, targets on another rank's shard). ``impl`` is a test hook.
        """
        kernels = pick_backend(cosines.device.type, impl).cosine
        acc_dtype = accumulation_dtype(cosines.dtype)
        target_col = local_target_column(
            label, ignore_index, cosines.shape[1], group_name, check_labels
        )
        cos_target = gather_target(cosines, target_col, acc_dtype)
        lse_rest, total = kernels.row_statistics_excluding_target(
            cosines, target_col, scale, row_sum, column_category, row_category
        )
        group = resolve_group(group_name)
        if group is not None:
            sums = [cos_target] if total is None else [cos_target, total]
            lse_rest, sums = combine_row_statistics(lse_rest, sums, group)
            cos_target, total = sums[0], (sums[1] if row_sum else None)
        if total is None:
            total = cosines.new_empty(0, dtype=acc_dtype)
        return lse_rest, cos_target, total, target_col

    return forward


# The default kernel (CPU and any non-CUDA device: chunked torch) and the CUDA one (Triton).
target_logsumexp_fwd = custom_op_per_device("marginkit::target_logsumexp_fwd", _forward_kernel)


@target_logsumexp_fwd.register_fake
def _target_logsumexp_fwd_fake(
    cosines: Tensor, label: Tensor, _scale: float, _ignore_index: int, row_sum: bool, *_unused
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n_rows = cosines.shape[0]
    torch._check(label.shape[0] == n_rows)
    acc_dtype = accumulation_dtype(cosines.dtype)
    return (
        cosines.new_empty(n_rows, dtype=acc_dtype),
        cosines.new_empty(n_rows, dtype=acc_dtype),
        cosines.new_empty(n_rows if row_sum else 0, dtype=acc_dtype),
        cosines.new_empty(n_rows, dtype=torch.int64),
    )


# ---------------------------------------------------------------------------------------------
# The backward op: writes the one N×C gradient (also the softmax of margin_cross_entropy)
# ---------------------------------------------------------------------------------------------


def _backward_kernel(pick_backend: BackendPicker):
    """The backward op's kernel of one device registration (N×C kernels as the forward's)."""

    def backward(
        cosines: Tensor,
        target_col: Tensor,
        lse_rest: Tensor,
        row_coef: Tensor,
        target_value: Tensor,
        row_add: Tensor | None,
        column_category: Tensor | None,
        row_category: Tensor | None,
        scale: float,
        impl: str | None,
    ) -> Tensor:
        r"""``y_ij = c_i e^{s x_ij − R_i} + a_i [κ(j) = ρ_i]`` off target, ``v_i`` at the target.

        The only N×C allocation of a forward plus backward, in the cosines' dtype (no clamp: an
        overflow is ``inf``).
        """
        return pick_backend(cosines.device.type, impl).cosine.write_row_softmax(
            cosines,
            target_col,
            lse_rest,
            row_coef,
            target_value,
            scale,
            cosines.new_empty(cosines.shape),
            row_add=row_add,
            column_category=column_category,
            row_category=row_category,
        )

    return backward


target_logsumexp_bwd = custom_op_per_device("marginkit::target_logsumexp_bwd", _backward_kernel)


@target_logsumexp_bwd.register_fake
def _target_logsumexp_bwd_fake(cosines: Tensor, *_unused) -> Tensor:
    return cosines.new_empty(cosines.shape)


def _setup_context(ctx, inputs, output) -> None:
    cosines, _label, scale, _ignore, row_sum, column_category, row_category, _group, impl = inputs[
        :9
    ]
    lse_rest, _cos_target, _row_sum, target_col = output
    # The cosines (an input, by reference) and N-vectors only: no N×C state.
    ctx.save_for_backward(cosines, target_col, lse_rest, column_category, row_category)
    ctx.scale, ctx.row_sum, ctx.impl = scale, row_sum, impl
    ctx.n_inputs = len(inputs)
    ctx.mark_non_differentiable(target_col)


def _backward(ctx, grad_lse, grad_cos, grad_sum, _grad_target_col):
    cosines, target_col, lse_rest, column_category, row_category = ctx.saved_tensors
    grad_cosines = None
    if ctx.needs_input_grad[0]:
        acc_dtype = lse_rest.dtype
        zeros = torch.zeros_like(lse_rest)
        grad_lse = zeros if grad_lse is None else grad_lse.to(acc_dtype)
        grad_cos = zeros if grad_cos is None else grad_cos.to(acc_dtype)
        row_add = None
        if ctx.row_sum and grad_sum is not None:
            row_add = grad_sum.to(acc_dtype)
        else:
            column_category = row_category = None
        grad_cosines = target_logsumexp_bwd(
            cosines,
            target_col,
            lse_rest,
            grad_lse * ctx.scale,
            grad_cos,
            row_add,
            column_category,
            row_category,
            ctx.scale,
            ctx.impl,
        )
    return (grad_cosines, *([None] * (ctx.n_inputs - 1)))


target_logsumexp_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# Public wrapper
# ---------------------------------------------------------------------------------------------


def target_logsumexp(
    cosines: Tensor,
    label: Tensor,
    scale: float,
    group: dist.ProcessGroup | None = None,
    *,
    ignore_index: int = -100,
    row_sum: bool = False,
    column_category: Tensor | None = None,
    row_category: Tensor | None = None,
    impl: str | None = None,
    check_labels: bool = True,
) -> TargetLogSumExp:
    r"""Row log-sum-exp of the scaled non-target cosines, the target cosine, and a row sum.

    Args:
        cosines: ``(N, C)`` float16/bfloat16/float32/float64; under ``group`` this rank's
            contiguous shard of the classes (shards may be uneven).
        label: ``(N,)`` integer class ids in ``[0, C)`` (under ``group``: global ids), or
            ``ignore_index`` (that row excludes nothing: ``lse_rest`` is the full row's,
            ``cos_target`` is 0).
        scale: :math:`s > 0`.
        group: model-parallel process group; only N-length vectors are all-reduced.
        ignore_index: label of rows that have no target.
        row_sum: also return :math:`S` (else ``None``).
        column_category: ``(C,)`` int64 category of each (local) column; with it,
            ``row_category`` ``(N,)`` is required and :math:`S` sums only the columns of the
            row's category.
        row_category: ``(N,)`` int64 category of each row's label.
        impl: test hook: ``None`` (the kernel registered for the device: chunked torch on the
            CPU, Triton on CUDA when installed), ``"torch"`` (chunked torch everywhere) or
            ``"triton"`` (on CPU tensors only under ``TRITON_INTERPRET=1``).
        check_labels: check the label range inside the op (one host read). ``False`` is for a
            caller that flags out-of-range rows itself without a host read (the sharded head
            poisons their loss with NaN, which the training loop's one finite check catches);
            such rows then have no target column and their outputs are meaningless.

    Returns:
        :class:`TargetLogSumExp` ``(lse_rest, cos_target, row_sum)``, float32 for half/float32
        cosines, float64 for float64 cosines, identical on every rank of ``group``.

    Raises:
        TypeError: a non-tensor ``cosines`` / ``label`` / category, a non-number ``scale``, a
            non-int ``ignore_index``, a non-bool ``row_sum``, a ``group`` that is not a process
            group, a non-string ``impl``.
        ValueError: a label outside ``[0, C)`` (under ``group``: the global range) that is not
            ``ignore_index`` (checked inside the op: one host read), shapes or dtypes that do
            not match, a non-positive or non-finite ``scale``, one category tensor without the
            other, an unknown ``impl``.

    Example:
        >>> import math, torch
        >>> x = torch.tensor([[0.5, 0.25, 0.0]], requires_grad=True)
        >>> lse_rest, cos_target, total = target_logsumexp(x, torch.tensor([0]), 2.0, row_sum=True)
        >>> round(lse_rest.item(), 4) == round(math.log(math.exp(0.5) + 1.0), 4)
        True
        >>> cos_target.tolist(), total.tolist()
        ([0.5], [0.25])
        >>> (lse_rest + cos_target).sum().backward()
        >>> x.grad.shape
        torch.Size([1, 3])
    """
    label = check_logits_and_label(cosines, label, name="cosines")
    scale = check_finite_number("scale", scale, positive=True)
    check_process_group(group)
    check_ignore_index(ignore_index)
    check_bool("row_sum", row_sum)
    check_categories(
        column_category, row_category, cosines.shape[1], label.shape[0], ("cosines", cosines)
    )
    check_option("impl", impl, IMPLS)
    check_bool("check_labels", check_labels)
    lse_rest, cos_target, total, _target_col = target_logsumexp_fwd(
        cosines,
        label,
        scale,
        ignore_index,
        row_sum,
        column_category,
        row_category,
        group_name(group),
        impl,
        check_labels,
    )
    return TargetLogSumExp(lse_rest, cos_target, total if row_sum else None)
