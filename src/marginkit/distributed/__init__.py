"""Scale-out helpers: gathers that carry gradients, class sharding, sharded checkpoints.

* :func:`all_gather_with_grad`: concatenate every rank's rows; the backward sums the gradient
  over ranks and returns each rank its own rows;
* :func:`all_reduce_sum_replicated`: sum over ranks for a value every rank then uses identically;
* :func:`shard_range`: the contiguous (possibly uneven) class range of a rank;
* :mod:`marginkit.distributed.checkpoint`: merge the per-shard weights of a checkpoint into one,
  or re-shard them for another world size (``python -m marginkit.distributed.checkpoint``).
"""

from marginkit.distributed.gather import (
    all_gather_with_grad,
    all_gather_without_grad,
    all_reduce_sum_replicated,
    gather_batch,
    gather_row_counts,
    world_and_rank,
)
from marginkit.distributed.sharding import shard_range, shard_sizes

__all__ = [
    "all_gather_with_grad",
    "all_gather_without_grad",
    "all_reduce_sum_replicated",
    "gather_batch",
    "gather_row_counts",
    "shard_range",
    "shard_sizes",
    "world_and_rank",
]
