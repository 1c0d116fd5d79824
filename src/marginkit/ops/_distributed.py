r"""The N-length collectives of the model-parallel margin cross-entropy.

Under a process group every rank holds a contiguous shard of the classes (rank ``r`` holds the
classes after those of ranks ``< r``; shards may be uneven) and the same ``N`` rows. Only
N-length vectors (and one int per rank) cross the network:

1. :func:`class_shard_offset`: an all-gather of each rank's shard size gives this rank's first
   class id and the total number of classes;
2. :func:`combine_row_statistics`: with local row log-sum-exps :math:`\ell_r`, an all-reduce
   MAX gives :math:`M = \max_r \ell_r`, then an all-reduce SUM of :math:`e^{\ell_r - M}` gives
   the global :math:`M + \log \sum_r e^{\ell_r - M}`. The target cosine (present on its owner
   only, zero elsewhere) and any other per-row sums (the row sum of :func:`~marginkit.ops.
   target_logsumexp`) ride along in the same SUM.

The op kernels call these with the group resolved from its name (custom ops take strings, not
``ProcessGroup`` objects); an empty name means single process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def group_name(group: dist.ProcessGroup | None) -> str:
    """Return the name a custom op receives for ``group`` (``""`` for single process)."""
    return "" if group is None else group.group_name


def resolve_group(name: str) -> dist.ProcessGroup | None:
    """Return the process group called ``name`` (``None`` for ``""``)."""
    if not name:
        return None
    from torch.distributed.distributed_c10d import _resolve_process_group

    return _resolve_process_group(name)


def class_shard_offset(
    num_local_classes: int, group: dist.ProcessGroup, device: torch.device
) -> tuple[int, int]:
    """Return ``(first class id of this rank, total number of classes)`` over ``group``."""
    world = dist.get_world_size(group)
    local = torch.tensor([num_local_classes], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(sizes, local, group=group)
    sizes = torch.cat(sizes).tolist()
    rank = dist.get_rank(group)
    return sum(sizes[:rank]), sum(sizes)


def combine_row_statistics(
    local_lse: Tensor, local_sums: list[Tensor], group: dist.ProcessGroup
) -> tuple[Tensor, list[Tensor]]:
    """Return the global row log-sum-exp and the global per-row sums (two all-reduces).

    An all-reduce MAX of the local log-sum-exps, then one all-reduce SUM of the stacked
    ``[exp(local_lse − max), *local_sums]``: whatever number of sums, two collectives of
    N-vectors.

    Args:
        local_lse: ``(N,)`` log-sum-exp over this rank's columns (``-inf`` when none counted).
        local_sums: ``(N,)`` vectors to sum over the ranks (a target cosine present on its
            owner only and 0 elsewhere, a row sum over this rank's columns, ...).
        group: the process group.

    Returns:
        ``(lse, sums)``: ``(N,)`` and a list of ``(N,)`` in the dtype of ``local_lse`` (separate
        tensors), identical on every rank.
    """
    row_max = local_lse.clone()
    dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
    shift = torch.where(row_max == float("-inf"), torch.zeros_like(row_max), row_max)
    stacked = [torch.exp(local_lse - shift)] + [part.to(local_lse.dtype) for part in local_sums]
    sums = torch.stack(stacked)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
    # Separate tensors, not views of one buffer (a custom op's outputs may not alias).
    return shift + torch.log(sums[0]), [part.clone() for part in sums[1:].unbind(0)]
