"""Run a function on N gloo ranks (spawned CPU processes) and collect what each returns."""

from __future__ import annotations

import io
import os
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world_size: int, store_path: str, function, args, queue) -> None:
    try:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size
        )
        # Tensors travel as bytes: a tensor shared by file descriptor dies with its process.
        buffer = io.BytesIO()
        torch.save(function(rank, world_size, *args), buffer)
        queue.put((rank, buffer.getvalue()))
    except BaseException:  # report anything to the parent instead of hanging it
        queue.put((rank, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_on_ranks(
    function: Callable[..., Any], world_size: int, store_dir: str, *args: Any, timeout: float = 180
) -> dict[int, Any]:
    """Call ``function(rank, world_size, *args)`` on ``world_size`` gloo ranks; return by rank.

    ``function`` must be importable (a module-level function) and return picklable results.
    A file store in ``store_dir`` avoids picking ports.
    """
    context = mp.get_context("spawn")
    queue = context.Queue()
    store_path = os.path.join(store_dir, "store")
    processes = [
        context.Process(target=_worker, args=(rank, world_size, store_path, function, args, queue))
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    results: dict[int, Any] = {}
    try:
        for _ in range(world_size):
            rank, payload = queue.get(timeout=timeout)
            if isinstance(payload, str) and payload.startswith("Traceback"):
                raise AssertionError(f"rank {rank} failed:\n{payload}")
            results[rank] = torch.load(io.BytesIO(payload), weights_only=False)
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    return results
