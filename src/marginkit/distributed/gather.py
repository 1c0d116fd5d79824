r"""Collectives with the gradient rules a loss over the *global* batch needs.

Every rank computes the same loss :math:`\mathcal L` of the gathered batch. Two rules follow:

* :func:`all_gather_with_grad`: rank :math:`r` holds rows :math:`x_r`; the forward concatenates
  every rank's rows, the backward returns :math:`\sum_q \partial\mathcal L_q / \partial x_r` —
  the sum over ranks of the gradient each rank computed for rank :math:`r`'s rows. When every
  rank computes the whole loss (a replicated pair loss), that is ``world`` times the gradient,
  which DDP's gradient *averaging* turns back into the gradient of :math:`\mathcal L`. When
  each rank computes only its part (a class-sharded head), the sum is the true gradient and the
  caller passes ``grad_scale=world`` to undo DDP's averaging.
* :func:`all_reduce_sum_replicated`: a sum whose result every rank uses identically; the
  backward passes the gradient through unchanged (summing it again would count it ``world``
  times).

Without an initialised process group (or with ``group`` of one rank) both are the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_and_rank(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """``(world size, rank)`` of ``group``; ``(1, 0)`` when torch.distributed is not initialised.

    Example:
        >>> world_and_rank()
        (1, 0)
    """
    if not (dist.is_available() and dist.is_initialized()):
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def gather_row_counts(rows: int, group=None, device=None) -> list[int]:
    """Every rank's row count (one all-gather of one int and one host read).

    Example:
        >>> gather_row_counts(5)
        [5]
    """
    world, _ = world_and_rank(group)
    if world == 1:
        return [rows]
    local = torch.tensor([rows], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(sizes, local, group=group)
    return [int(size) for size in torch.cat(sizes).tolist()]


def _gather_rows(tensor: Tensor, sizes: list[int], group) -> Tensor:
    largest = max(sizes)
    padded = tensor.new_zeros((largest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor, group, grad_scale: float, sizes: list[int] | None) -> Tensor:
        _, rank = world_and_rank(group)
        if sizes is None:
            sizes = gather_row_counts(tensor.shape[0], group, tensor.device)
        ctx.group, ctx.grad_scale = group, grad_scale
        ctx.begin = sum(sizes[:rank])
        ctx.rows = tensor.shape[0]
        return _gather_rows(tensor, sizes, group)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        local = grad[ctx.begin : ctx.begin + ctx.rows]
        if ctx.grad_scale != 1.0:
            local = local * ctx.grad_scale
        return local, None, None, None


class _AllReduceSumReplicated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor, group) -> Tensor:
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def all_gather_with_grad(
    tensor: Tensor,
    group: dist.ProcessGroup | None = None,
    grad_scale: float = 1.0,
    sizes: list[int] | None = None,
) -> Tensor:
    """Concatenate ``tensor``'s rows from every rank (uneven row counts allowed), with gradient.

    Args:
        tensor: ``(n_r, ...)`` this rank's rows.
        group: the process group (``None``: the default group).
        grad_scale: factor applied to the gradient returned to this rank's rows (see the
            module docstring: ``world`` for a class-sharded head under DDP).
        sizes: every rank's row count when known (:func:`gather_row_counts`), saving the
            all-gather and host read that finds them.

    Returns:
        ``(Σ_r n_r, ...)`` rows of rank 0, then rank 1, … (the identity in one process).

    Example:
        >>> import torch
        >>> all_gather_with_grad(torch.ones(2, 3)).shape
        torch.Size([2, 3])
    """
    world, _ = world_and_rank(group)
    if world == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor, group, float(grad_scale), sizes)


def all_gather_without_grad(
    tensor: Tensor, group: dist.ProcessGroup | None = None, sizes: list[int] | None = None
) -> Tensor:
    """Concatenate ``tensor``'s rows from every rank (uneven counts allowed), no gradient.

    ``sizes``: every rank's row count when known (see :func:`all_gather_with_grad`).

    Example:
        >>> import torch
        >>> all_gather_without_grad(torch.arange(3)).tolist()
        [0, 1, 2]
    """
    world, _ = world_and_rank(group)
    if world == 1:
        return tensor
    if sizes is None:
        sizes = gather_row_counts(tensor.shape[0], group, tensor.device)
    return _gather_rows(tensor.detach(), sizes, group)


def all_reduce_sum_replicated(tensor: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Sum ``tensor`` over ranks; the gradient passes through unchanged (see module docstring).

    Example:
        >>> import torch
        >>> all_reduce_sum_replicated(torch.ones(2)).tolist()
        [1.0, 1.0]
    """
    world, _ = world_and_rank(group)
    if world == 1:
        return tensor
    return _AllReduceSumReplicated.apply(tensor, group)


def gather_batch(
    features: Tensor, labels: Tensor, group: dist.ProcessGroup | None = None
) -> tuple[Tensor, Tensor]:
    """The global batch of every rank's ``(features, labels)``, gradient to the local features.

    What pair losses with ``gather_embeddings=True`` use so that miners see every rank's items:
    every rank computes the same loss on the global batch, and DDP's averaging of the
    all-reduced gradient gives the gradient of that loss (see the module docstring).

    Example:
        >>> import torch
        >>> features, labels = gather_batch(torch.ones(2, 3), torch.tensor([0, 1]))
        >>> features.shape, labels.tolist()
        (torch.Size([2, 3]), [0, 1])
    """
    world, _ = world_and_rank(group)
    if world == 1:
        return features, labels
    sizes = gather_row_counts(features.shape[0], group, features.device)
    return (
        all_gather_with_grad(features, group, 1.0, sizes),
        all_gather_without_grad(labels, group, sizes),
    )
