"""What the commands print besides their results: one copy of each log line, machine defaults.

Light on purpose (no torch at import).
"""

from __future__ import annotations

import logging
import os
import sys


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_num_workers(most: int = 4) -> int:
    """Data loader workers for this machine: ``most``, but at most one per CPU beyond the one
    the training loop runs on (0 on a single CPU), so that PyTorch does not warn about it.

    Example:
        >>> 0 <= default_num_workers() <= 4
        True
    """
    return max(0, min(int(most), available_cpus() - 1))


def default_pin_memory() -> bool:
    """Pin host memory for the loaders only when a CUDA device is there to copy to."""
    import torch

    return bool(torch.cuda.is_available())


def single_lightning_log() -> None:
    """Print each Lightning INFO line once.

    The ``lightning`` logger has its own console handler and also propagates to the root logger,
    where Hydra has installed its console and file handlers: every line came out twice. With
    Hydra's handlers present, Lightning's own console handler goes; the lines still reach
    Hydra's console and its ``<task>.log`` file.
    """
    root = logging.getLogger()
    if not root.handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and handler.stream in (
                sys.stderr,
                sys.stdout,
            ):
                logger.removeHandler(handler)
        logger.propagate = True
