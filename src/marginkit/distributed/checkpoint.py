"""Merge the per-shard class weights of a checkpoint into one weight, or re-shard them.

A :class:`~marginkit.losses.ShardedMarginHead` saves its weights as ``<prefix>weight_shards.<r>``
(one entry per rank). ``merge`` replaces them by one ``<prefix>weight`` (what a single-process
head of the same margins loads); ``reshard`` splits them for another world size. The head itself
loads either form for any world size, so re-sharding is only needed by tools that read the
shards directly.

Command line::

    python -m marginkit.distributed.checkpoint merge run/last.ckpt merged.ckpt
    python -m marginkit.distributed.checkpoint reshard run/last.ckpt out.ckpt --world-size 4
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from marginkit.distributed.sharding import shard_sizes

_SHARD_KEY = re.compile(r"^(?P<prefix>.*)weight_shards\.(?P<rank>\d+)$")


def _shard_groups(state_dict: dict) -> dict[str, list[str]]:
    groups: dict[str, list[tuple[int, str]]] = {}
    for key in state_dict:
        match = _SHARD_KEY.match(key)
        if match:
            groups.setdefault(match["prefix"], []).append((int(match["rank"]), key))
    return {prefix: [key for _, key in sorted(keys)] for prefix, keys in groups.items()}


def merge_shards(state_dict: dict) -> dict:
    """Return a copy of ``state_dict`` with every ``weight_shards.<r>`` group concatenated.

    Example:
        >>> import torch
        >>> merged = merge_shards({"loss.weight_shards.0": torch.zeros(2, 3),
        ...                        "loss.weight_shards.1": torch.ones(1, 3)})
        >>> list(merged), merged["loss.weight"].shape
        (['loss.weight'], torch.Size([3, 3]))
    """
    merged = dict(state_dict)
    for prefix, keys in _shard_groups(state_dict).items():
        merged[prefix + "weight"] = torch.cat([state_dict[key] for key in keys])
        for key in keys:
            del merged[key]
    return merged


def reshard(state_dict: dict, world_size: int) -> dict:
    """Return a copy of ``state_dict`` with its sharded (or merged) weights split for ``world_size``.

    Merged weights are recognised as the ``<prefix>weight`` of a prefix that had shards; pass
    the output of :func:`merge_shards` of a sharded checkpoint, or a sharded one.

    Example:
        >>> import torch
        >>> out = reshard({"loss.weight_shards.0": torch.zeros(5, 2)}, 2)
        >>> [tuple(out[k].shape) for k in sorted(out)]
        [(3, 2), (2, 2)]
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"`world_size` must be a positive int, got {world_size!r}")
    groups = _shard_groups(state_dict)
    if not groups:
        raise ValueError("`state_dict` has no `weight_shards.<rank>` entries to re-shard")
    merged = merge_shards(state_dict)
    for prefix in groups:
        full = merged.pop(prefix + "weight")
        for rank, shard in enumerate(torch.split(full, shard_sizes(len(full), world_size))):
            merged[f"{prefix}weight_shards.{rank}"] = shard.clone()
    return merged


def _rewrite(source: Path, target: Path, transform) -> None:
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    checkpoint["state_dict"] = transform(checkpoint["state_dict"])
    # Optimizer state of the sharded rows belonged to one layout; it does not carry over.
    checkpoint.pop("optimizer_states", None)
    torch.save(checkpoint, target)


def main(argv: Sequence[str] | None = None) -> None:
    """``merge`` or ``reshard`` a Lightning checkpoint's sharded class weights."""
    parser = argparse.ArgumentParser(prog="python -m marginkit.distributed.checkpoint")
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser("merge", help="concatenate the shards into one weight")
    split = commands.add_parser("reshard", help="split the weights for another world size")
    for command in (merge, split):
        command.add_argument("source", type=Path)
        command.add_argument("target", type=Path)
    split.add_argument("--world-size", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "merge":
        _rewrite(args.source, args.target, merge_shards)
    else:
        _rewrite(args.source, args.target, lambda sd: reshard(sd, args.world_size))
    print(f"wrote {args.target}")


if __name__ == "__main__":
    main()
