r"""Chunked-torch kernels of the normalised-linear log-sum-exp (any device; the CPU path).

The twins of :mod:`marginkit.ops._linear_triton` (same signatures, same results). With the raw
embeddings :math:`e_i` ``(N, D)``, raw class weights :math:`w_j` ``(C, D)``, their inverse norms
:math:`a_i = 1/\lVert e_i\rVert`, :math:`b_j = 1/\lVert w_j\rVert`, unit vectors
:math:`\hat e_i = a_i e_i`, :math:`\hat w_j = b_j w_j`, cosines :math:`x_{ij} = \hat e_i\cdot\hat w_j`
and a target column :math:`t_i` per row (outside ``[0, C)``: none):

* :func:`row_logsumexp_linear` (forward) :math:`R_i = \log \sum_{j \ne t_i} e^{s x_{ij}}`;
* :func:`row_logsumexp_linear_backward` (backward) with :math:`P_{ij} = c_i e^{s x_{ij} - R_i}`
  (:math:`P_{i t_i} = 0`) returns :math:`P\hat W` ``(N, D)``, the gradient with respect to
  the unit embeddings, and :math:`P^\top \hat E` ``(C, D)`` taken through the weights'
  normalisation (:func:`project_to_tangent_`) block by block.

Both walk 2-D blocks of rows × classes; the forward keeps a running max and sum per row (online
log-sum-exp), the backward recomputes each block's cosines. Per block: one normalised weight
block ``(C_b, D)`` and one ``(N_b, C_b)`` scratch in the accumulation dtype, reused for every
block, so the working memory is :math:`O(N_b C_b + C_b D)` whatever :math:`C` is. The
embedding gradient is returned with respect to the *unit* embeddings (the caller adds its target
and row-sum terms, then takes the normalisation's backward once); the weight gradient is
returned with respect to the raw weights, each block projected while it is in cache (the
projection is linear, so the caller projects its own terms separately and adds them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from marginkit.ops._dtypes import accumulation_dtype

__all__ = [
    "NORM_EPS",
    "block_shape",
    "project_to_tangent_",
    "row_logsumexp_linear",
    "row_logsumexp_linear_backward",
]

# F.normalize's floor on the norm: x / max(‖x‖, eps).
NORM_EPS = 1e-12

# Bytes of the (rows × classes) scratch block and of the normalised (classes × D) weight block in
# the accumulation dtype. 2 MiB keeps a block (and the matching weight block) in a core's L2
# while the 3-4 elementwise passes over it run, and at N = 512 rows, D = 256 gives 1024-class
# blocks: matrix products of 512 × 256 × 1024, large enough for MKL to run at full speed.
_BLOCK_BYTES = 2 * 1024 * 1024
_MIN_BLOCK_CLASSES = 256
_MAX_BLOCK_CLASSES = 8192


def block_shape(
    n_rows: int, n_classes: int, dim: int, element_size: int, chunk_size: int | None = None
) -> tuple[int, int]:
    """Return ``(rows per block, classes per block)`` for ``_BLOCK_BYTES`` scratch blocks.

    Both the ``(rows, classes)`` block and the normalised ``(classes, dim)`` weight block stay
    within the budget: every row in one block when that leaves at least
    ``_MIN_BLOCK_CLASSES`` classes per block, the rows split otherwise. ``chunk_size`` fixes
    the classes per block.

    Example:
        >>> block_shape(512, 100_000, 256, 4)
        (512, 1024)
        >>> block_shape(512, 100, 256, 4, chunk_size=32)
        (512, 32)
    """
    n_rows, n_classes = max(1, n_rows), max(1, n_classes)
    budget = max(1, _BLOCK_BYTES // element_size)
    if chunk_size is None:
        chunk_size = min(_MAX_BLOCK_CLASSES, budget // n_rows, budget // max(1, dim))
        chunk_size = max(_MIN_BLOCK_CLASSES, chunk_size)
    block_classes = min(chunk_size, n_classes)
    block_rows = min(n_rows, max(1, budget // block_classes))
    return block_rows, block_classes


def _exclude_targets(block: Tensor, local_target: Tensor) -> None:
    """Set ``block[i, local_target[i]] = -inf`` where ``0 <= local_target[i] < block.shape[1]``.

    A gather, a where and a scatter of ``N_b`` values: no host synchronisation.
    """
    n_cols = block.shape[1]
    hit = (local_target >= 0) & (local_target < n_cols)
    index = local_target.clamp(0, n_cols - 1)[:, None]
    current = block.gather(1, index)
    block.scatter_(1, index, torch.where(hit[:, None], float("-inf"), current))


def _unit_rows(matrix: Tensor, inv_norm: Tensor, out: Tensor) -> Tensor:
    """``out = matrix · inv_norm[:, None]`` in ``out``'s dtype (no other temporary)."""
    return torch.mul(matrix, inv_norm[:, None], out=out)


def row_logsumexp_linear(
    embeddings: Tensor,
    weight: Tensor,
    inv_norm_embeddings: Tensor,
    inv_norm_weight: Tensor,
    target_col: Tensor,
    scale: float,
    chunk_size: int | None = None,
) -> Tensor:
    r"""Row log-sum-exp of the scaled cosines without the target column, blockwise.

    .. math::
        R_i = \log \sum_{j \ne t_i} \exp\big(s\,a_i b_j\, e_i \cdot w_j\big)

    Per block: :math:`z = (s\hat E_b)\hat W_b^\top` (one matrix product), the target columns set
    to :math:`-\infty`, then the running max :math:`m_i` and sum
    :math:`\sigma_i \leftarrow \sigma_i e^{m_i - m_i'} + \sum_j e^{z_{ij} - m_i'}`. A row with
    no column left gets :math:`-\infty`.

    Interface, arguments and result: :meth:`marginkit.ops._kernels.LinearKernels.row_logsumexp_linear`.

    Example:
        >>> import torch
        >>> e, w = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
        >>> lse = row_logsumexp_linear(e, w, 1 / e.norm(dim=1), 1 / w.norm(dim=1),
        ...                            torch.tensor([2]), 1.0)
        >>> torch.allclose(lse, torch.tensor([1.0]).exp().add(1.0).log())  # log(e^1 + e^0)
        True
    """
    acc = accumulation_dtype(weight.dtype)
    n_rows, n_classes = embeddings.shape[0], weight.shape[0]
    device = embeddings.device
    lse = torch.full((n_rows,), float("-inf"), dtype=acc, device=device)
    if n_rows == 0 or n_classes == 0:
        return lse
    block_rows, block_classes = block_shape(
        n_rows, n_classes, embeddings.shape[1], lse.element_size(), chunk_size
    )
    scaled_unit = _unit_rows(
        embeddings,
        inv_norm_embeddings * scale,
        torch.empty(embeddings.shape, dtype=acc, device=device),
    )
    unit_block = torch.empty(block_classes, weight.shape[1], dtype=acc, device=device)
    scratch = torch.empty(block_rows * block_classes, dtype=acc, device=device)
    running_max = torch.full((n_rows,), float("-inf"), dtype=acc, device=device)
    running_sum = torch.zeros(n_rows, dtype=acc, device=device)
    for c0 in range(0, n_classes, block_classes):
        c1 = min(c0 + block_classes, n_classes)
        unit_weight = _unit_rows(weight[c0:c1], inv_norm_weight[c0:c1], unit_block[: c1 - c0])
        for r0 in range(0, n_rows, block_rows):
            r1 = min(r0 + block_rows, n_rows)
            block = scratch[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
            torch.mm(scaled_unit[r0:r1], unit_weight.T, out=block)
            _exclude_targets(block, target_col[r0:r1] - c0)
            old_max = running_max[r0:r1]
            new_max = torch.maximum(old_max, block.amax(dim=1))
            # While every column seen was excluded the max is -inf: shift by 0 (no -inf - -inf).
            shift = torch.where(new_max == float("-inf"), 0.0, new_max)
            block.sub_(shift[:, None]).exp_()
            running_sum[r0:r1] = running_sum[r0:r1] * torch.exp(old_max - shift) + block.sum(1)
            running_max[r0:r1] = new_max
    shift = torch.where(running_max == float("-inf"), 0.0, running_max)
    return torch.add(shift, running_sum.log(), out=lse)


def project_to_tangent_(
    grad_unit: Tensor, unit: Tensor, inv_norm: Tensor, scratch: Tensor | None = None
) -> Tensor:
    r"""In place, row by row: :math:`g \leftarrow (g - (g\cdot\hat u)\,\hat u)/\lVert u\rVert`.

    The backward of ``u / max(‖u‖, eps)`` (``F.normalize``, eps = 1e-12) given the gradient
    ``g`` with respect to the unit rows ``û`` and ``inv_norm`` = ``1 / max(‖u‖, eps)``: rows
    whose norm is below the floor are only divided.

    Example:
        >>> import torch
        >>> g = torch.tensor([[1.0, 1.0]])
        >>> project_to_tangent_(g, torch.tensor([[1.0, 0.0]]), torch.tensor([0.5])).tolist()
        [[0.0, 0.5]]
    """
    if scratch is None:
        dot = torch.linalg.vecdot(grad_unit, unit, dim=1)
    else:  # the products in a reused buffer (no fresh temporary per block)
        dot = torch.mul(grad_unit, unit, out=scratch[: grad_unit.numel()].view_as(grad_unit))
        dot = dot.sum(dim=1)
    dot = torch.where(inv_norm < 1.0 / NORM_EPS, dot, 0.0)
    grad_unit.addcmul_(dot[:, None], unit, value=-1.0)
    return grad_unit.mul_(inv_norm[:, None])


def row_logsumexp_linear_backward(
    embeddings: Tensor,
    weight: Tensor,
    inv_norm_embeddings: Tensor,
    inv_norm_weight: Tensor,
    target_col: Tensor,
    lse: Tensor,
    row_coef: Tensor,
    scale: float,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    r"""The backward of :math:`\sum_i c_i R_i / s`-style terms, blockwise: :math:`P\hat W` and
    the projected :math:`P^\top\hat E` with :math:`P_{ij} = c_i e^{s x_{ij} - R_i}`.

    Each weight block is taken through the normalisation while it is in cache. Per block:
    :math:`z = (s\hat E_b)\hat W_b^\top - R_b` in one ``addmm``, targets to :math:`-\infty`,
    ``exp_``, ``mul_(c)``, then two more matrix products.

    Interface, arguments and result:
    :meth:`marginkit.ops._kernels.LinearKernels.row_logsumexp_linear_backward`.

    Example:
        >>> import torch
        >>> e, w = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> ones = torch.ones(1)
        >>> lse = row_logsumexp_linear(e, w, ones, torch.ones(2), torch.tensor([0]), 1.0)
        >>> ge, gw = row_logsumexp_linear_backward(e, w, ones, torch.ones(2), torch.tensor([0]),
        ...                                        lse, ones, 1.0)
        >>> ge.tolist(), gw.tolist()  # the gradient of w_1 = (0, 1) along ê = (1, 0)
        ([[0.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]])
    """
    acc = accumulation_dtype(weight.dtype)
    n_rows, n_classes = embeddings.shape[0], weight.shape[0]
    dim = embeddings.shape[1]
    device = embeddings.device
    grad_unit_embeddings = torch.zeros(n_rows, dim, dtype=acc, device=device)
    # Every block of the weight gradient is written by its first row block: no zero fill.
    grad_weight = torch.empty(n_classes, dim, dtype=weight.dtype, device=device)
    if n_rows == 0 or n_classes == 0:
        return grad_unit_embeddings, grad_weight.zero_()
    block_rows, block_classes = block_shape(
        n_rows, n_classes, embeddings.shape[1], lse.element_size(), chunk_size
    )
    unit = _unit_rows(
        embeddings, inv_norm_embeddings, torch.empty(embeddings.shape, dtype=acc, device=device)
    )
    scaled_unit = unit * scale
    neg_lse = lse.to(acc).neg()[:, None]
    row_coef = row_coef.to(acc)[:, None]
    unit_block = torch.empty(block_classes, dim, dtype=acc, device=device)
    # Half-precision weights: the block's gradient is accumulated in float32 here first.
    grad_block_scratch = None
    if weight.dtype != acc:
        grad_block_scratch = torch.empty(block_classes, dim, dtype=acc, device=device)
    scratch = torch.empty(block_rows * block_classes, dtype=acc, device=device)
    product = torch.empty(block_classes * dim, dtype=acc, device=device)
    for c0 in range(0, n_classes, block_classes):
        c1 = min(c0 + block_classes, n_classes)
        unit_weight = _unit_rows(weight[c0:c1], inv_norm_weight[c0:c1], unit_block[: c1 - c0])
        if grad_block_scratch is None:
            grad_weight_block = grad_weight[c0:c1]
        else:
            grad_weight_block = grad_block_scratch[: c1 - c0]
        for r0 in range(0, n_rows, block_rows):
            r1 = min(r0 + block_rows, n_rows)
            block = scratch[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
            torch.addmm(neg_lse[r0:r1], scaled_unit[r0:r1], unit_weight.T, out=block)
            _exclude_targets(block, target_col[r0:r1] - c0)
            block.exp_().mul_(row_coef[r0:r1])
            grad_unit_embeddings[r0:r1].addmm_(block, unit_weight)
            if r0 == 0:
                torch.mm(block.T, unit[r0:r1], out=grad_weight_block)
            else:
                grad_weight_block.addmm_(block.T, unit[r0:r1])
        project_to_tangent_(grad_weight_block, unit_weight, inv_norm_weight[c0:c1], product)
        if grad_block_scratch is not None:
            grad_weight[c0:c1] = grad_weight_block
    return grad_unit_embeddings, grad_weight
