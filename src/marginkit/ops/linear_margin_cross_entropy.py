r"""Normalised-linear margin cross-entropy that never materialises the N×C logits.

``torch.ops.marginkit.linear_target_logsumexp_{fwd,bwd}`` take the raw embeddings ``(N, D)`` and
class weights ``(C, D)`` and return N-vectors only: with :math:`\hat e_i`, :math:`\hat w_j` the
L2-normalised rows, :math:`x_{ij} = \hat e_i \cdot \hat w_j` and target :math:`t_i`,

.. math::
    R_i = \log \sum_{j \ne t_i} e^{s x_{ij}}, \quad
    (c_i, \theta_i) = \mathrm{target\_angle}(\hat e_i, \hat w_{t_i}), \quad
    S_i = \sum_{j \ne t_i,\ \kappa(j) = \rho_i} x_{ij}.

:math:`R` is computed blockwise over rows × classes with an online log-sum-exp (the kernels of
:mod:`~marginkit.ops._linear_cpu` / :mod:`~marginkit.ops._linear_triton`); the op also returns
the N unit embeddings and unit target weights, of which the wrappers take
:math:`(c, \theta)` with :func:`~marginkit.ops._margin.target_angle` in plain torch (autograd
differentiates it; the op's backward receives the gradients of those rows); :math:`S` comes
from the per-category sums of the unit weights. The backward recomputes each block's cosines,
forms the block's gradient, accumulates the gradient with respect to the unit embeddings and
that of each weight block (taken through the weights' normalisation while the block is in
cache), adds the target and row-sum terms, then chains the embeddings' part through the
normalisation: :math:`\partial/\partial e_i = (g_i - (g_i\cdot\hat e_i)\hat e_i)/\lVert e_i\rVert`.

The margin is applied on top, on N-vectors, by the one copy of the margin maths
(:func:`~marginkit.ops._margin.combined_margin_logit`,
:func:`~marginkit.ops._margin.margin_softmax_loss`). See ``docs/linear_op.md``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from marginkit._validation import (
    IMPLS,
    REDUCTIONS,
    check_arcface_fallback,
    check_bool,
    check_categories,
    check_embeddings_weight_and_label,
    check_finite_number,
    check_ignore_index,
    check_margins,
    check_option,
    check_positive_int,
    check_process_group,
)
from marginkit.distributed import all_reduce_sum_replicated
from marginkit.ops import _linear_cpu
from marginkit.ops._backends import BackendPicker, custom_op_per_device
from marginkit.ops._distributed import combine_row_statistics, group_name, resolve_group
from marginkit.ops._dtypes import accumulation_dtype
from marginkit.ops._linear_cpu import project_to_tangent_
from marginkit.ops._margin import (
    GRAD_MODES,
    MARGIN_FALLBACKS,
    combined_margin_logit,
    margin_softmax_loss,
    target_angle,
)
from marginkit.ops._targets import local_target_column
from marginkit.ops.margin_cross_entropy import reduce_rows
from marginkit.ops.target_logsumexp import TargetLogSumExp

__all__ = [
    "LinearTargetTerms",
    "linear_margin_cross_entropy",
    "linear_target_logsumexp",
    "linear_target_terms",
]


class LinearTargetTerms(NamedTuple):
    """What :func:`linear_target_terms` returns: differentiable N-vectors (accumulation dtype)."""

    lse_rest: Tensor
    cos_target: Tensor
    theta_target: Tensor
    row_sum: Tensor | None


# ---------------------------------------------------------------------------------------------
# Shared pieces of forward and backward
# ---------------------------------------------------------------------------------------------


def _inverse_norms(matrix: Tensor, acc: torch.dtype) -> Tensor:
    """``1 / max(‖row‖, eps)`` per row in ``acc``, as F.normalize divides."""
    norms = torch.linalg.vector_norm(matrix, dim=1, dtype=acc)
    return norms.clamp_(min=_linear_cpu.NORM_EPS).reciprocal_()


def _unit_targets(
    embeddings: Tensor, weight: Tensor, inv_e: Tensor, inv_w: Tensor, target_col: Tensor
) -> tuple[Tensor, Tensor]:
    """``(ê, ŵ_t)``, both ``(N, D)`` in the accumulation dtype.

    Rows without a target column here get the first basis vector as ``ŵ_t``: a placeholder
    whose angle to any ``ê`` has a finite gradient (the caller masks those rows out; a zero
    vector would give ``atan2(0, 0)``, whose gradient is NaN even when multiplied by 0).
    """
    acc = inv_e.dtype
    unit_embeddings = embeddings.to(acc) * inv_e[:, None]
    placeholder = torch.zeros_like(unit_embeddings)
    if placeholder.shape[1] > 0:
        placeholder[:, 0] = 1.0
    if weight.shape[0] == 0:
        return unit_embeddings, placeholder
    column = target_col.clamp(min=0)
    unit_targets = weight[column].to(acc) * inv_w[column][:, None]
    return unit_embeddings, torch.where((target_col >= 0)[:, None], unit_targets, placeholder)


def _category_count(column_category: Tensor, row_category: Tensor) -> int:
    """``K``: one more than the largest category id (one host read)."""
    top = max(
        int(column_category.max()) if column_category.numel() else 0,
        int(row_category.max()) if row_category.numel() else 0,
    )
    return top + 1


def _category_unit_sums(
    weight: Tensor,
    inv_w: Tensor,
    column_category: Tensor | None,
    n_categories: int,
    chunk: int,
) -> Tensor:
    r"""``(K, D)``: :math:`U_k = \sum_{j:\kappa(j)=k} \hat w_j` (``K = 1``: all classes)."""
    acc = inv_w.dtype
    sums = torch.zeros(n_categories, weight.shape[1], dtype=acc, device=weight.device)
    for c0 in range(0, weight.shape[0], chunk):
        c1 = min(c0 + chunk, weight.shape[0])
        unit = weight[c0:c1].to(acc) * inv_w[c0:c1, None]
        if column_category is None:
            sums[0] += unit.sum(dim=0)
        else:
            sums.index_add_(0, column_category[c0:c1], unit)
    return sums


# ---------------------------------------------------------------------------------------------
# Forward op
# ---------------------------------------------------------------------------------------------


def _forward_kernel(pick_backend: BackendPicker):
    """The forward op's kernel for one device; ``pick_backend(device_type, impl)`` picks the kernels."""

    def forward(
        embeddings: Tensor,
        weight: Tensor,
        label: Tensor,
        scale: float,
        ignore_index: int,
        row_sum: bool,
        column_category: Tensor | None,
        row_category: Tensor | None,
        group_name: str,
        chunk_size: int | None,
        impl: str | None,
        check_labels: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        r"""``(lse_rest, row_sum_all, unit_embeddings, unit_targets, inv_norm_e, inv_norm_w, target_col)``.

        * ``lse_rest`` ``(N,)``: :math:`R`, combined over the ranks of the group (identical on all);
        * ``row_sum_all`` ``(N,)`` (empty unless ``row_sum``): this rank's
          :math:`\hat e_i\cdot U_{\rho_i}`, the row sum over its classes of the row's category
          *including* the target column;
        * ``unit_embeddings``, ``unit_targets`` ``(N, D)``: :math:`\hat e_i` and
          :math:`\hat w_{t_i}` (a placeholder where this rank has no target column) for the exact
          target angle, taken in torch by the caller;
        * the inverse norms and the local target column (``-1``: none), not differentiable.

        Inputs are trusted (the public wrappers check them) except the label range (data
        dependent, ``ValueError`` here). ``embeddings`` and ``weight`` have the same dtype.
        """
        kernels = pick_backend(embeddings.device.type, impl).linear
        acc = accumulation_dtype(weight.dtype)
        n_rows, n_classes = embeddings.shape[0], weight.shape[0]
        target_col = local_target_column(label, ignore_index, n_classes, group_name, check_labels)
        group = resolve_group(group_name)

        inv_e = _inverse_norms(embeddings, acc)
        inv_w = _inverse_norms(weight, acc)
        lse_rest = kernels.row_logsumexp_linear(
            embeddings, weight, inv_e, inv_w, target_col, scale, chunk_size
        )
        if group is not None:
            lse_rest, _ = combine_row_statistics(lse_rest, [], group)
        unit_embeddings, unit_targets = _unit_targets(embeddings, weight, inv_e, inv_w, target_col)
        if row_sum:
            n_categories = 1
            if column_category is not None:
                n_categories = _category_count(column_category, row_category)
            _, block = _linear_cpu.block_shape(
                n_rows, n_classes, embeddings.shape[1], acc.itemsize, chunk_size
            )
            sums = _category_unit_sums(weight, inv_w, column_category, n_categories, block)
            row_sums = (
                sums[0].expand_as(unit_embeddings)
                if column_category is None
                else sums[row_category]
            )
            row_sum_all = (unit_embeddings * row_sums).sum(dim=1)
        else:
            row_sum_all = torch.zeros(0, dtype=acc, device=embeddings.device)
        return lse_rest, row_sum_all, unit_embeddings, unit_targets, inv_e, inv_w, target_col

    return forward


# The default kernel (CPU and any non-CUDA device: chunked torch) and the CUDA one (Triton).
linear_target_logsumexp_fwd = custom_op_per_device(
    "marginkit::linear_target_logsumexp_fwd", _forward_kernel
)


@linear_target_logsumexp_fwd.register_fake
def _linear_target_logsumexp_fwd_fake(
    embeddings: Tensor,
    weight: Tensor,
    label: Tensor,
    _scale: float,
    _ignore_index: int,
    row_sum: bool,
    *_unused,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    n_rows = embeddings.shape[0]
    torch._check(label.shape[0] == n_rows)
    torch._check(weight.shape[1] == embeddings.shape[1])
    acc = accumulation_dtype(weight.dtype)
    return (
        embeddings.new_empty(n_rows, dtype=acc),
        embeddings.new_empty(n_rows if row_sum else 0, dtype=acc),
        embeddings.new_empty(embeddings.shape, dtype=acc),
        embeddings.new_empty(embeddings.shape, dtype=acc),
        embeddings.new_empty(n_rows, dtype=acc),
        embeddings.new_empty(weight.shape[0], dtype=acc),
        embeddings.new_empty(n_rows, dtype=torch.int64),
    )


# ---------------------------------------------------------------------------------------------
# Backward op
# ---------------------------------------------------------------------------------------------


def _backward_kernel(pick_backend: BackendPicker):
    """The backward op's kernel for one device (kernels picked as the forward's)."""

    def backward(
        grad_lse: Tensor,
        grad_row_sum: Tensor,
        grad_unit_embeddings: Tensor,
        grad_unit_targets: Tensor,
        embeddings: Tensor,
        weight: Tensor,
        target_col: Tensor,
        lse_rest: Tensor,
        inv_e: Tensor,
        inv_w: Tensor,
        column_category: Tensor | None,
        row_category: Tensor | None,
        scale: float,
        chunk_size: int | None,
        impl: str | None,
    ) -> tuple[Tensor, Tensor]:
        """``(grad_embeddings, grad_weight)`` in the inputs' dtype; no communication.

        Under a group, ``grad_weight`` is this rank's shard of the gradient and ``grad_embeddings``
        this rank's share of it (its classes and the targets it owns): the embedding gradient is
        the sum over ranks.
        """
        kernels = pick_backend(embeddings.device.type, impl).linear
        acc = inv_e.dtype
        n_rows, n_classes = embeddings.shape[0], weight.shape[0]
        # The log-sum-exp's part: w.r.t. the unit embeddings, and the raw weights (projected).
        grad_unit_e, grad_weight = kernels.row_logsumexp_linear_backward(
            embeddings,
            weight,
            inv_e,
            inv_w,
            target_col,
            lse_rest,
            grad_lse.to(acc) * scale,
            scale,
            chunk_size,
        )
        unit_embeddings, unit_targets = _unit_targets(embeddings, weight, inv_e, inv_w, target_col)
        _, block = _linear_cpu.block_shape(
            n_rows, n_classes, embeddings.shape[1], acc.itemsize, chunk_size
        )

        if grad_row_sum.numel() > 0:
            # S_i = ê_i · U_{ρ_i}, U_k the sum of the unit weights of category k:
            # ∂S/∂ê_i = U_{ρ_i}, ∂S/∂ŵ_j = V_{κ(j)} with V_k = Σ_{i: ρ_i = k} g_i ê_i.
            grad_row_sum = grad_row_sum.to(acc)
            weighted_rows = grad_row_sum[:, None] * unit_embeddings
            if column_category is None:
                sums = _category_unit_sums(weight, inv_w, None, 1, block)
                grad_unit_e.addcmul_(grad_row_sum[:, None], sums[0][None, :])
                per_category = weighted_rows.sum(dim=0, keepdim=True)
            else:
                n_categories = _category_count(column_category, row_category)
                sums = _category_unit_sums(weight, inv_w, column_category, n_categories, block)
                grad_unit_e.addcmul_(grad_row_sum[:, None], sums[row_category])
                per_category = torch.zeros_like(sums).index_add_(0, row_category, weighted_rows)
            for c0 in range(0, n_classes, block):
                c1 = min(c0 + block, n_classes)
                unit_weight = weight[c0:c1].to(acc) * inv_w[c0:c1, None]
                if column_category is None:
                    term = per_category.expand(c1 - c0, -1).clone()
                else:
                    term = per_category[column_category[c0:c1]]
                project_to_tangent_(term, unit_weight, inv_w[c0:c1])
                grad_weight[c0:c1] += term.to(grad_weight.dtype)

        # The target terms (the caller's exact target angle of ê and ŵ_t), projected separately:
        # the normalisation's backward is linear.
        grad_unit_e += grad_unit_embeddings.to(acc)
        if n_classes > 0:
            column = target_col.clamp(min=0)
            term = torch.where((target_col >= 0)[:, None], grad_unit_targets.to(acc), 0.0)
            project_to_tangent_(term, unit_targets, inv_w[column])
            grad_weight.index_add_(0, column, term.to(grad_weight.dtype))
        grad_embeddings = project_to_tangent_(grad_unit_e, unit_embeddings, inv_e)
        return grad_embeddings.to(embeddings.dtype), grad_weight

    return backward


linear_target_logsumexp_bwd = custom_op_per_device(
    "marginkit::linear_target_logsumexp_bwd", _backward_kernel
)


@linear_target_logsumexp_bwd.register_fake
def _linear_target_logsumexp_bwd_fake(
    _grad_lse: Tensor,
    _grad_row_sum: Tensor,
    _grad_unit_embeddings: Tensor,
    _grad_unit_targets: Tensor,
    embeddings: Tensor,
    weight: Tensor,
    *_unused,
) -> tuple[Tensor, Tensor]:
    return torch.empty_like(embeddings), torch.empty_like(weight)


def _setup_context(ctx, inputs, output) -> None:
    embeddings, weight, _label, scale, _ignore, row_sum, column_category, row_category = inputs[:8]
    chunk_size, impl = inputs[9], inputs[10]
    lse_rest, _row_sum, _unit_e, _unit_t, inv_e, inv_w, target_col = output
    ctx.save_for_backward(embeddings, weight, target_col, lse_rest, inv_e, inv_w)
    ctx.categories = (column_category, row_category)
    ctx.row_sum, ctx.scale, ctx.chunk_size, ctx.impl = row_sum, scale, chunk_size, impl
    ctx.n_inputs = len(inputs)
    ctx.mark_non_differentiable(inv_e, inv_w, target_col)


def _backward(ctx, grad_lse, grad_row_sum, grad_unit_e, grad_unit_t, *_unused):
    embeddings, weight, target_col, lse_rest, inv_e, inv_w = ctx.saved_tensors
    if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
        return (None,) * ctx.n_inputs
    acc = lse_rest.dtype
    if grad_lse is None:
        grad_lse = torch.zeros_like(lse_rest)
    if not ctx.row_sum:
        grad_row_sum = lse_rest.new_empty(0)
    elif grad_row_sum is None:
        grad_row_sum = torch.zeros_like(lse_rest)
    if grad_unit_e is None:
        grad_unit_e = torch.zeros(embeddings.shape, dtype=acc, device=embeddings.device)
    if grad_unit_t is None:
        grad_unit_t = torch.zeros(embeddings.shape, dtype=acc, device=embeddings.device)
    column_category, row_category = ctx.categories
    grad_embeddings, grad_weight = linear_target_logsumexp_bwd(
        grad_lse,
        grad_row_sum,
        grad_unit_e,
        grad_unit_t,
        embeddings,
        weight,
        target_col,
        lse_rest,
        inv_e,
        inv_w,
        column_category,
        row_category,
        ctx.scale,
        ctx.chunk_size,
        ctx.impl,
    )
    return (grad_embeddings, grad_weight, *([None] * (ctx.n_inputs - 2)))


linear_target_logsumexp_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# Public wrappers
# ---------------------------------------------------------------------------------------------


def linear_target_terms(
    embeddings: Tensor,
    weight: Tensor,
    label: Tensor,
    scale: float,
    group: dist.ProcessGroup | None = None,
    *,
    ignore_index: int = -100,
    row_sum: bool = False,
    column_category: Tensor | None = None,
    row_category: Tensor | None = None,
    chunk_size: int | None = None,
    impl: str | None = None,
    check_labels: bool = True,
) -> LinearTargetTerms:
    r"""Non-target log-sum-exp, exact target angle and row sum of normalised-linear cosines.

    With :math:`\hat e_i = e_i/\lVert e_i\rVert`, :math:`\hat w_j = w_j/\lVert w_j\rVert` and
    :math:`x_{ij} = \hat e_i\cdot\hat w_j`, without ever forming the ``(N, C)`` matrix:

    .. math::
        R_i = \log\sum_{j\ne t_i} e^{s x_{ij}}, \quad
        (c_i, \theta_i) = \operatorname{target\_angle}(\hat e_i, \hat w_{t_i}), \quad
        S_i = \sum_{j\ne t_i,\ \kappa(j)=\rho_i} x_{ij}

    (:math:`S` only with ``row_sum``). All four are differentiable with respect to the raw
    ``embeddings`` and ``weight`` (the gradient goes through the normalisation), and the
    gradient of :math:`\theta` is exact for every angle (no :math:`1/\sin\theta`). A margin head
    turns them into its loss with
    ``margin_softmax_loss(R, s * combined_margin_logit(c, θ, ...))``.

    Args:
        embeddings: ``(N, D)`` float16/bfloat16/float32/float64 (cast to ``weight``'s dtype).
        weight: ``(C, D)`` class weights; under ``group`` this rank's contiguous shard.
        label: ``(N,)`` or ``(N, 1)`` integer class ids (global under ``group``), or
            ``ignore_index`` (the row excludes nothing: :math:`R` is over every class,
            :math:`c = 0`, :math:`\theta = \pi/2`).
        scale: :math:`s > 0`.
        group: model-parallel process group. Every rank holds the same ``N`` rows and labels;
            only N-length vectors are all-reduced (an all-gather of one int per rank, then a
            MAX and two SUMs). The outputs are identical on every rank. **The embedding
            gradient each rank computes is its share** (its classes and the targets it owns);
            the full gradient is the sum over ranks, which the backward of an all-gather with
            gradient (:func:`marginkit.distributed.all_gather_with_grad`) computes.
        ignore_index: label of rows without a target.
        row_sum: also return :math:`S`.
        column_category: ``(C,)`` int64 category of each (local) class; with ``row_category``
            ``(N,)``, :math:`S` sums only the classes of the row's category.
        row_category: ``(N,)`` int64 category of each row.
        chunk_size: classes per block (``None``: sized from a memory budget).
        impl: ``None``, ``"torch"`` or ``"triton"`` as for :func:`margin_cross_entropy`.
        check_labels: check the label range inside the op (one host read); ``False`` as for
            :func:`~marginkit.ops.target_logsumexp`.

    Returns:
        :class:`LinearTargetTerms` ``(lse_rest, cos_target, theta_target, row_sum)``, float32
        for half/float32 inputs, float64 for float64.

    Example:
        >>> import torch
        >>> terms = linear_target_terms(torch.randn(4, 8), torch.randn(10, 8),
        ...                             torch.tensor([0, 3, 9, 2]), 16.0)
        >>> terms.lse_rest.shape, terms.theta_target.shape, terms.row_sum
        (torch.Size([4]), torch.Size([4]), None)
    """
    embeddings, label = check_embeddings_weight_and_label(embeddings, weight, label)
    scale = check_finite_number("scale", scale, positive=True)
    check_ignore_index(ignore_index)
    if chunk_size is not None:
        check_positive_int("chunk_size", chunk_size)
    check_option("impl", impl, IMPLS)
    check_process_group(group)
    if check_bool("row_sum", row_sum):
        check_categories(
            column_category,
            row_category,
            weight.shape[0],
            embeddings.shape[0],
            ("embeddings", embeddings),
        )
    else:
        column_category = row_category = None
    lse_rest, row_sum_all, unit_embeddings, unit_targets, _, _, target_col = (
        linear_target_logsumexp_fwd(
            embeddings,
            weight,
            label,
            scale,
            ignore_index,
            row_sum,
            column_category,
            row_category,
            group_name(group),
            chunk_size,
            impl,
            check_bool("check_labels", check_labels),
        )
    )
    # The exact target angle, on the rows whose target this rank holds (0 elsewhere).
    owned = target_col >= 0
    cos_target, theta_target = target_angle(unit_embeddings, unit_targets)
    cos_target = torch.where(owned, cos_target, 0.0)
    theta_target = torch.where(owned, theta_target, 0.0)
    parts = [cos_target, theta_target]
    if row_sum:
        # S = ê · U_ρ − [κ(t) = ρ] c: the owner of the target removes its column.
        same = owned
        if column_category is not None and weight.shape[0] > 0:
            same = owned & (column_category[target_col.clamp(min=0)] == row_category)
        parts.append(row_sum_all - torch.where(same, cos_target, 0.0))
    if group is not None:
        parts = all_reduce_sum_replicated(torch.stack(parts), group).unbind(0)
    cos_target, theta_target = parts[0], parts[1]
    # Rows without a target: cos 0, angle π/2 (a neutral point of every margin function).
    valid = label != ignore_index
    theta_target = torch.where(valid, theta_target, math.pi / 2)
    return LinearTargetTerms(lse_rest, cos_target, theta_target, parts[2] if row_sum else None)


def linear_target_logsumexp(
    embeddings: Tensor,
    weight: Tensor,
    label: Tensor,
    scale: float,
    group: dist.ProcessGroup | None = None,
    **options,
) -> TargetLogSumExp:
    r""":func:`~marginkit.ops.target_logsumexp` of the cosines of ``embeddings`` and ``weight``.

    .. math::
        R_i = \log\sum_{j\ne t_i} e^{s\,\hat e_i\cdot\hat w_j}, \quad
        c_i = \hat e_i\cdot\hat w_{t_i}, \quad
        S_i = \sum_{j\ne t_i,\ \kappa(j)=\rho_i} \hat e_i\cdot\hat w_j

    the same :class:`~marginkit.ops.TargetLogSumExp` as ``target_logsumexp(F.linear(
    F.normalize(embeddings), F.normalize(weight)), label, scale, ...)`` with gradients with
    respect to the raw ``embeddings`` and ``weight``, computed blockwise without the ``(N, C)``
    cosines: :func:`linear_target_terms` without the target angle. Arguments, the keyword-only
    ``options`` (``ignore_index``, ``row_sum``, ``column_category``, ``row_category``,
    ``chunk_size``, ``impl``, ``check_labels``) and ``group`` semantics are
    :func:`linear_target_terms`'s.

    Example:
        >>> import torch
        >>> out = linear_target_logsumexp(torch.randn(4, 8), torch.randn(10, 8),
        ...                               torch.tensor([0, 3, 9, 2]), 16.0, row_sum=True)
        >>> out.lse_rest.shape, out.cos_target.shape, out.row_sum.shape
        (torch.Size([4]), torch.Size([4]), torch.Size([4]))
    """
    terms = linear_target_terms(embeddings, weight, label, scale, group, **options)
    return TargetLogSumExp(terms.lse_rest, terms.cos_target, terms.row_sum)


def linear_margin_cross_entropy(
    embeddings: Tensor,
    weight: Tensor,
    label: Tensor,
    margin1: float = 1.0,
    margin2: float = 0.5,
    margin3: float = 0.0,
    scale: float = 64.0,
    group: dist.ProcessGroup | None = None,
    reduction: str = "mean",
    *,
    margin_fallback: str = "none",
    grad_mode: str = "exact",
    ignore_index: int = -100,
    chunk_size: int | None = None,
    impl: str | None = None,
) -> Tensor:
    r"""Margin softmax cross-entropy of normalised embeddings against normalised class weights.

    .. math::
        \ell_i = -\log \frac{e^{s\phi_i}}{e^{s\phi_i} + \sum_{j\ne y_i} e^{s\,\hat e_i\cdot\hat w_j}},
        \qquad \phi_i = \cos(m_1\theta_i + m_2) - m_3,\quad
        \theta_i = \angle(e_i, w_{y_i})

    fused with the L2 normalisation and the matrix product: the ``(N, C)`` logits are never
    stored. The forward walks blocks of rows × classes with an online log-sum-exp; the backward
    recomputes each block and accumulates both gradients, so the extra memory is
    :math:`O(N\cdot\text{block} + C\cdot D)` (the weight gradient) instead of several
    :math:`N\times C` buffers. Gradients are exact (no filtering of small softmax entries), and
    the target angle is computed from the vectors, so the embedding gradient stays exact down to
    angles of :math:`10^{-6}` rad and below. Same margins, options and reductions as
    :func:`~marginkit.ops.margin_cross_entropy` (ArcFace ``(1, m, 0)``, CosFace ``(1, 0, m)``,
    combined ``(m_1, m_2, m_3)``).

    Args:
        embeddings: ``(N, D)`` float16/bfloat16/float32/float64, any norm. Cast to
            ``weight``'s dtype when it differs.
        weight: ``(C, D)`` class weights (any norm), like ``nn.Linear.weight``. Under ``group``,
            this rank's contiguous shard (uneven shards allowed).
        label: ``(N,)`` or ``(N, 1)`` integer class ids in ``[0, C)`` (global under ``group``),
            or ``ignore_index``.
        margin1: multiplicative angular margin :math:`m_1 > 0`.
        margin2: additive angular margin :math:`m_2` (radians).
        margin3: additive cosine margin :math:`m_3`.
        scale: :math:`s > 0`.
        group: model-parallel process group (see :func:`linear_target_terms`: every rank gets
            the same loss and its shard of the weight gradient; **the embedding gradient of
            each rank is its share, to be summed over ranks**, as the backward of
            :func:`marginkit.distributed.all_gather_with_grad` does).
        reduction: ``"mean"`` (over non-ignored rows; 0 when all are ignored), ``"sum"`` or
            ``"none"`` (``(N,)``, 0 for ignored rows).
        margin_fallback: ``"none"``, ``"arcface"``, ``"easy"`` or ``"monotonic"`` (see
            :func:`~marginkit.ops.combined_margin_logit`).
        grad_mode: ``"exact"`` or ``"straight_through"``.
        ignore_index: label of rows that contribute nothing.
        chunk_size: classes per block (``None``: sized from a memory budget).
        impl: ``None`` (chunked torch on CPU, Triton on CUDA), ``"torch"`` or ``"triton"``.

    Returns:
        The loss in float32 (float64 for float64 weights): a scalar, or ``(N,)``.

    Raises:
        TypeError: a non-tensor input, a non-number scale or margin, a non-int
            ``ignore_index``/``chunk_size``, a ``group`` that is not a ``ProcessGroup``.
        ValueError: shapes that do not match, a non-float dtype, tensors on different
            devices, non-integer labels, a label outside ``[0, C)`` that is not
            ``ignore_index`` (naming the label and its row), an unknown option, a
            non-positive/non-finite ``scale`` or ``margin1``, a non-finite margin.

    Example:
        >>> import torch
        >>> embeddings = torch.randn(4, 8, requires_grad=True)
        >>> weight = torch.randn(10, 8, requires_grad=True)
        >>> loss = linear_margin_cross_entropy(embeddings, weight, torch.tensor([0, 3, 9, 2]),
        ...                                    scale=16.0)
        >>> loss.backward()
        >>> loss.shape, embeddings.grad.shape, weight.grad.shape
        (torch.Size([]), torch.Size([4, 8]), torch.Size([10, 8]))
    """
    margin1, margin2, margin3 = check_margins(
        margin1, margin2, margin3, ("margin1", "margin2", "margin3")
    )
    check_option("reduction", reduction, REDUCTIONS)
    check_option("margin_fallback", margin_fallback, MARGIN_FALLBACKS)
    check_arcface_fallback(margin_fallback, margin1, "margin1")
    check_option("grad_mode", grad_mode, GRAD_MODES)
    terms = linear_target_terms(
        embeddings,
        weight,
        label,
        scale,
        group,
        ignore_index=ignore_index,
        chunk_size=chunk_size,
        impl=impl,
    )
    label = label.reshape(-1)
    phi = combined_margin_logit(
        terms.cos_target,
        terms.theta_target,
        margin1,
        margin2,
        margin3,
        margin_fallback,
        grad_mode,
    )
    loss = margin_softmax_loss(terms.lse_rest, scale * phi)
    loss = torch.where(label != ignore_index, loss, torch.zeros_like(loss))
    return reduce_rows(loss, label, ignore_index, reduction)
