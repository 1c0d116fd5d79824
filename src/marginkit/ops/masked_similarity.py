r"""Masked row reductions over a similarity matrix: ``torch.ops.marginkit.masked_similarity_{fwd,bwd}``.

For unit embeddings :math:`x` (B, D), unit references :math:`y` (R, D: the batch, a memory bank
or C proxies), the value :math:`v_{ij} = T(x_i \cdot y_j)` (cosine, or the squared / plain
Euclidean distance of unit vectors) and, per row, its positives :math:`P_i` and negatives
:math:`N_i` (pair counts :math:`c_{ij}`, from labels or from mined pairs), the op returns six
B-vectors

.. math::
    L^P_i = \log \sum_{j \in P_i} c_{ij}\, e^{\varphi_P(v_{ij})}, \quad
    S^P_i = \sum_{j \in P_i} c_{ij}\, v_{ij}, \quad n^P_i = \sum_{j \in P_i} c_{ij}

and the same over :math:`N_i` with :math:`\varphi_N` (:math:`L = -\infty` for an empty set),
where the exponent is :math:`\varphi(v) = a\, w(v)\, (v - d)` with :math:`w = 1` or
:math:`w = \mathrm{relu}(\sigma (v - c))` (a weight held constant in the gradient: Circle
loss's). MultiSimilarity, Circle, SupCon, NT-Xent, ProxyAnchor, ProxyNCA, the lifted structure
losses and N-pairs are functions of these B-vectors (:mod:`marginkit.losses`); the B×R matrix
is never held: the forward makes one blockwise pass (chunked torch,
:mod:`marginkit.ops._masked_similarity_cpu`, or Triton,
:mod:`marginkit.ops._masked_similarity_triton`, picked by the kernel registered for the device)
and saves the inputs (by reference) and the two log-sum-exps; the backward op recomputes the
blocks and returns the (B, D) and (R, D) gradients exactly:

.. math::
    \frac{\partial\mathcal L}{\partial v_{ij}} = \sum_{M \in \{P, N\}} c^M_{ij}
    \big(g^{L^M}_i e^{\varphi_M(v_{ij}) - L^M_i} \varphi_M'(v_{ij}) + g^{S^M}_i\big).

Under a process group the references are sharded over the ranks (each holds some of the bank
or of the proxies, the same B rows): the B-vectors are combined with two all-reduces
(:func:`~marginkit.ops._distributed.combine_row_statistics`), the backward stays local (the
embeddings' gradient is this shard's part; a gather with gradient upstream sums the parts).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from types import ModuleType
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from marginkit._validation import (
    IMPLS,
    check_float_dtype,
    check_option,
    check_process_group,
    check_same_device,
    check_tensor,
)
from marginkit.ops import _masked_similarity_cpu as _cpu
from marginkit.ops._distributed import combine_row_statistics, group_name, resolve_group
from marginkit.ops._dtypes import accumulation_dtype

__all__ = ["DISTANCES", "Exponent", "MaskedRowReductions", "masked_similarity_reductions"]

DISTANCES = ("cosine", "euclidean", "squared_euclidean")


class Exponent(NamedTuple):
    r"""The exponent :math:`\varphi(v) = a\, w(v)\, (v - d)` of one mask's log-sum-exp.

    ``scale`` :math:`a`, ``shift`` :math:`d`; ``direction`` :math:`\sigma \in \{-1, 0, 1\}`:
    0 gives :math:`w = 1`, else :math:`w = \mathrm{relu}(\sigma (v - c))` with ``threshold``
    :math:`c`, held constant in the gradient.

    Example:
        >>> Exponent(2.0, 0.5)  # 2 (v - 0.5)
        Exponent(scale=2.0, shift=0.5, threshold=0.0, direction=0)
    """

    scale: float
    shift: float = 0.0
    threshold: float = 0.0
    direction: int = 0


IDENTITY = Exponent(1.0)  # φ(v) = v


class MaskedRowReductions(NamedTuple):
    """What :func:`masked_similarity_reductions` returns: B-vectors in the accumulation dtype.

    ``lse_pos`` / ``lse_neg`` and ``sum_pos`` / ``sum_neg`` are differentiable; the counts
    ``n_pos`` / ``n_neg`` are not.
    """

    lse_pos: Tensor
    lse_neg: Tensor
    sum_pos: Tensor
    sum_neg: Tensor
    n_pos: Tensor
    n_neg: Tensor


# ---------------------------------------------------------------------------------------------
# Kernels per device
# ---------------------------------------------------------------------------------------------


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_kernels() -> ModuleType:
    if not _triton_installed():
        raise RuntimeError(
            "`impl='triton'` needs the optional `triton` package: pip install 'marginkit[triton]'"
        )
    from marginkit.ops import _masked_similarity_triton

    return _masked_similarity_triton


def _default_kernels(device_type: str, impl: str | None) -> ModuleType:
    if impl != "triton":
        return _cpu
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            "`impl='triton'` got CPU tensors: the Triton kernels run on the CPU only in "
            "Triton's interpreter; set TRITON_INTERPRET=1 before triton is first imported, "
            "use CUDA tensors, or pass impl=None / impl='torch'"
        )
    return _triton_kernels()


def _cuda_kernels(_device_type: str, impl: str | None) -> ModuleType:
    if impl == "torch":
        return _cpu
    if impl == "triton" or _triton_installed():
        return _triton_kernels()
    return _cpu


def _forward_kernel(pick):
    def forward(
        embeddings: Tensor,
        references: Tensor,
        labels: Tensor | None,
        ref_labels: Tensor | None,
        pos_count: Tensor | None,
        neg_count: Tensor | None,
        self_offset: int,
        distance: str,
        pos_term: list[float],
        neg_term: list[float],
        group_name: str,
        impl: str | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The six B-vectors (see the module docstring), combined over ``group_name``'s ranks."""
        kernels = pick(embeddings.device.type, impl)
        outputs = kernels.row_reductions(
            embeddings,
            references,
            labels,
            ref_labels,
            pos_count,
            neg_count,
            self_offset,
            distance,
            pos_term,
            neg_term,
        )
        group = resolve_group(group_name)
        if group is not None:
            lse_pos, sums = combine_row_statistics(outputs[0], outputs[2:], group)
            lse_neg, _ = combine_row_statistics(outputs[1], [], group)
            outputs = [lse_pos, lse_neg, *sums]
        return tuple(outputs)

    return forward


masked_similarity_fwd = torch.library.custom_op(
    "marginkit::masked_similarity_fwd", _forward_kernel(_default_kernels), mutates_args=()
)
masked_similarity_fwd.register_kernel("cuda")(_forward_kernel(_cuda_kernels))


@masked_similarity_fwd.register_fake
def _masked_similarity_fwd_fake(embeddings: Tensor, references: Tensor, *_unused):
    torch._check(embeddings.shape[1] == references.shape[1])
    acc_dtype = accumulation_dtype(embeddings.dtype)
    return tuple(embeddings.new_empty(embeddings.shape[0], dtype=acc_dtype) for _ in range(6))


def _backward_kernel(pick):
    def backward(
        grad_lse_pos: Tensor,
        grad_lse_neg: Tensor,
        grad_sum_pos: Tensor,
        grad_sum_neg: Tensor,
        lse_pos: Tensor,
        lse_neg: Tensor,
        embeddings: Tensor,
        references: Tensor,
        labels: Tensor | None,
        ref_labels: Tensor | None,
        pos_count: Tensor | None,
        neg_count: Tensor | None,
        self_offset: int,
        distance: str,
        pos_term: list[float],
        neg_term: list[float],
        impl: str | None,
        references_grad: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """``(grad_embeddings, grad_references)`` in the inputs' dtypes, blocks recomputed.

        ``references_grad=False`` (references without gradient: a memory bank) skips the
        references' product and returns an empty (0, D) tensor for them.
        """
        grad_embeddings, grad_references = pick(embeddings.device.type, impl).row_gradients(
            [grad_lse_pos, grad_lse_neg, grad_sum_pos, grad_sum_neg],
            [lse_pos, lse_neg],
            embeddings,
            references,
            labels,
            ref_labels,
            pos_count,
            neg_count,
            self_offset,
            distance,
            pos_term,
            neg_term,
            references_grad=references_grad,
        )
        return grad_embeddings.to(embeddings.dtype), grad_references.to(references.dtype)

    return backward


masked_similarity_bwd = torch.library.custom_op(
    "marginkit::masked_similarity_bwd", _backward_kernel(_default_kernels), mutates_args=()
)
masked_similarity_bwd.register_kernel("cuda")(_backward_kernel(_cuda_kernels))


@masked_similarity_bwd.register_fake
def _masked_similarity_bwd_fake(*args):
    embeddings, references = args[6], args[7]
    references_grad = args[17] if len(args) > 17 else True
    if not references_grad:
        return torch.empty_like(embeddings), references.new_empty((0, references.shape[1]))
    return torch.empty_like(embeddings), torch.empty_like(references)


def _setup_context(ctx, inputs, output) -> None:
    embeddings, references, labels, ref_labels, pos_count, neg_count = inputs[:6]
    self_offset, distance, pos_term, neg_term, _group, impl = inputs[6:]
    lse_pos, lse_neg = output[0], output[1]
    # The inputs (by reference) and two B-vectors: no B×R state.
    ctx.save_for_backward(
        embeddings, references, labels, ref_labels, pos_count, neg_count, lse_pos, lse_neg
    )
    ctx.options = (self_offset, distance, pos_term, neg_term, impl)
    ctx.mark_non_differentiable(output[4], output[5])


def _backward(ctx, grad_lse_pos, grad_lse_neg, grad_sum_pos, grad_sum_neg, _gn_pos, _gn_neg):
    embeddings, references, labels, ref_labels, pos_count, neg_count, lse_pos, lse_neg = (
        ctx.saved_tensors
    )
    grad_embeddings = grad_references = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        grads = [grad_lse_pos, grad_lse_neg, grad_sum_pos, grad_sum_neg]
        grads = [torch.zeros_like(lse_pos) if g is None else g.to(lse_pos.dtype) for g in grads]
        self_offset, distance, pos_term, neg_term, impl = ctx.options
        grad_embeddings, grad_references = masked_similarity_bwd(
            *grads,
            lse_pos,
            lse_neg,
            embeddings,
            references,
            labels,
            ref_labels,
            pos_count,
            neg_count,
            self_offset,
            distance,
            pos_term,
            neg_term,
            impl,
            ctx.needs_input_grad[1],
        )
        if not ctx.needs_input_grad[1]:
            grad_references = None
    return grad_embeddings, grad_references, *([None] * 10)


masked_similarity_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# Public wrapper
# ---------------------------------------------------------------------------------------------


def _check_labels(name: str, value: object, rows: int, like: Tensor) -> Tensor:
    value = check_tensor(name, value)
    if value.ndim != 1 or value.shape[0] != rows:
        raise ValueError(f"`{name}` must have shape ({rows},), got {tuple(value.shape)}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise ValueError(f"`{name}` must hold integer class ids, got {value.dtype}")
    check_same_device(name, value, "embeddings", like)
    return value.long()


def _check_count(name: str, value: object, shape: tuple[int, int], like: Tensor) -> Tensor:
    value = check_tensor(name, value)
    if tuple(value.shape) != shape:
        raise ValueError(f"`{name}` must have shape {shape}, got {tuple(value.shape)}")
    if value.is_floating_point() or value.is_complex():
        raise ValueError(f"`{name}` must be bool or integer pair counts, got {value.dtype}")
    check_same_device(name, value, "embeddings", like)
    return value


def _check_exponent(name: str, value: object) -> list[float]:
    if not isinstance(value, Exponent):
        raise TypeError(f"`{name}` must be an Exponent, got {type(value).__name__}")
    if value.direction not in (-1, 0, 1):
        raise ValueError(f"`{name}.direction` must be -1, 0 or 1, got {value.direction}")
    return [float(part) for part in value]


def masked_similarity_reductions(
    embeddings: Tensor,
    references: Tensor,
    labels: Tensor | None = None,
    ref_labels: Tensor | None = None,
    *,
    pos_count: Tensor | None = None,
    neg_count: Tensor | None = None,
    self_offset: int | None = None,
    distance: str = "cosine",
    pos_exponent: Exponent = IDENTITY,
    neg_exponent: Exponent = IDENTITY,
    group: dist.ProcessGroup | None = None,
    impl: str | None = None,
) -> MaskedRowReductions:
    r"""Per-row log-sum-exps, sums and counts over the positives and negatives of :math:`v = T(x y^\top)`.

    See the module docstring for the formulas; memory is O(B · block) beyond the inputs.

    Args:
        embeddings: ``(B, D)`` unit vectors (float16/bfloat16/float32/float64).
        references: ``(R, D)`` unit vectors, same dtype and device.
        labels: ``(B,)`` class ids of the rows; with ``ref_labels`` ``(R,)`` they define the
            masks (positive: same label; negative: another one).
        ref_labels: ``(R,)`` class ids of the references.
        pos_count: ``(B, R)`` bool or integer pair counts of the positives, instead of labels
            (mined pairs; a pair listed twice counts twice); with ``neg_count``.
        neg_count: ``(B, R)`` pair counts of the negatives.
        self_offset: reference ``(i + self_offset) mod R`` is row ``i``'s own item (``0``
            when the references are the batch itself, the queue slot of a cross-batch memory):
            excluded from both masks (its label is the row's, so it is no negative). Labels only.
        distance: ``"cosine"``, ``"euclidean"`` or ``"squared_euclidean"`` (of unit vectors).
        pos_exponent: :math:`\varphi_P` of the positives' log-sum-exp (default :math:`v`).
        neg_exponent: :math:`\varphi_N` of the negatives' log-sum-exp.
        group: process group over which ``references`` are sharded (B-vectors are combined).
        impl: test hook: ``None`` (the device's kernel), ``"torch"`` or ``"triton"``.

    Returns:
        :class:`MaskedRowReductions`, float32 (float64 for float64 inputs).

    Raises:
        TypeError: a non-tensor input, a non-:class:`Exponent` exponent.
        ValueError: shapes, dtypes or devices that disagree, neither labels nor counts (or
            both), an unknown ``distance`` or ``impl``, a negative ``self_offset``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
        >>> out = masked_similarity_reductions(x, x, torch.tensor([0, 1]), torch.tensor([0, 0]))
        >>> out.n_pos.tolist(), out.sum_neg.tolist()  # row 1 against its two negatives
        ([2.0, 0.0], [0.0, 1.0])
        >>> [round(value, 4) for value in out.lse_neg.exp().tolist()]  # row 1: e^0 + e^1
        [0.0, 3.7183]
    """
    embeddings = check_tensor("embeddings", embeddings)
    references = check_tensor("references", references)
    for name, value in (("embeddings", embeddings), ("references", references)):
        if value.ndim != 2:
            raise ValueError(f"`{name}` must have shape (N, D), got {tuple(value.shape)}")
        check_float_dtype(name, value)
    check_same_device("references", references, "embeddings", embeddings)
    if references.shape[1] != embeddings.shape[1] or references.dtype != embeddings.dtype:
        raise ValueError(
            f"`references` must be ({references.shape[0]}, {embeddings.shape[1]}) "
            f"{embeddings.dtype} like `embeddings`, got {tuple(references.shape)} "
            f"{references.dtype}"
        )
    batch, n_refs = embeddings.shape[0], references.shape[0]
    by_labels = labels is not None or ref_labels is not None
    by_counts = pos_count is not None or neg_count is not None
    if by_labels == by_counts:
        raise ValueError(
            "give either `labels` and `ref_labels` or `pos_count` and `neg_count`, got "
            f"labels={labels is not None}, ref_labels={ref_labels is not None}, "
            f"pos_count={pos_count is not None}, neg_count={neg_count is not None}"
        )
    if by_labels:
        labels = _check_labels("labels", labels, batch, embeddings)
        ref_labels = _check_labels("ref_labels", ref_labels, n_refs, embeddings)
    else:
        pos_count = _check_count("pos_count", pos_count, (batch, n_refs), embeddings)
        neg_count = _check_count("neg_count", neg_count, (batch, n_refs), embeddings)
    if self_offset is None:
        self_offset = -1
    elif not isinstance(self_offset, int) or isinstance(self_offset, bool) or self_offset < 0:
        raise ValueError(f"`self_offset` must be an int >= 0 or None, got {self_offset!r}")
    elif by_counts:
        raise ValueError("`self_offset` applies to label masks; counts already exclude pairs")
    check_option("distance", distance, DISTANCES)
    check_process_group(group)
    check_option("impl", impl, IMPLS)
    outputs = masked_similarity_fwd(
        embeddings,
        references,
        labels,
        ref_labels,
        pos_count,
        neg_count,
        self_offset,
        distance,
        _check_exponent("pos_exponent", pos_exponent),
        _check_exponent("neg_exponent", neg_exponent),
        group_name(group),
        impl,
    )
    return MaskedRowReductions(*outputs)
