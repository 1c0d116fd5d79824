"""How classes are split across ranks: contiguous shards, the first ``C mod W`` ranks one larger."""

from __future__ import annotations


def shard_sizes(num_classes: int, world_size: int) -> list[int]:
    """Sizes of the ``world_size`` contiguous class shards of ``num_classes`` classes.

    The first ``num_classes % world_size`` ranks hold one class more (uneven shards), as
    insightface's Partial FC does.

    Example:
        >>> shard_sizes(10, 4)
        [3, 3, 2, 2]
    """
    if num_classes < world_size:
        raise ValueError(
            f"`num_classes` ({num_classes}) must be at least the world size ({world_size}) "
            "to give every rank a class shard"
        )
    base, extra = divmod(num_classes, world_size)
    return [base + (rank < extra) for rank in range(world_size)]


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """``(first, end)`` class ids of ``rank``'s shard (``end`` exclusive).

    Example:
        >>> shard_range(10, 4, 1), shard_range(10, 4, 3)
        ((3, 6), (8, 10))
    """
    sizes = shard_sizes(num_classes, world_size)
    first = sum(sizes[:rank])
    return first, first + sizes[rank]
