"""Two gloo processes, each updating with its part of the data, equal one process on all of it."""

from __future__ import annotations

import math
import queue as queue_module
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from marginkit.metrics import RetrievalMetrics, VerificationMetrics

WORLD_SIZE = 2
TOP_K = (1, 3, 10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _data() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    n = 87  # split 37 / 50: uneven parts exercise the padded gather
    prototypes = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.5, -0.5, 0.5, 0.5], [-0.5, 0.5, -0.5, 0.5]])
    tied = prototypes[torch.randint(0, 3, (n,), generator=generator)]
    continuous = torch.randn(n, 4, generator=generator)
    pairs = 203
    issame = torch.rand(pairs, generator=generator) < 0.5
    return {
        "embeddings": torch.where(torch.arange(n).unsqueeze(1) % 2 == 0, tied, continuous),
        "labels": torch.randint(0, 5, (n,), generator=generator),
        "is_query": torch.rand(n, generator=generator) < 0.7,
        "is_gallery": torch.rand(n, generator=generator) < 0.8,
        "scores": torch.randn(pairs, generator=generator) + issame.float(),
        "issame": issame,
    }


def _evaluate(parts: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    retrieval = RetrievalMetrics(top_k=TOP_K)
    flagged = RetrievalMetrics(top_k=TOP_K, distance="euclidean")
    verification = VerificationMetrics(far_targets=(0.01, 0.1), n_folds=10)
    for part in parts:
        retrieval.update(part["embeddings"], part["labels"])
        flagged.update(part["embeddings"], part["labels"], part["is_query"], part["is_gallery"])
        verification.update_scores(part["scores"], part["issame"])
    results: dict[str, float] = {}
    for prefix, metric in (("loo/", retrieval), ("flags/", flagged), ("verif/", verification)):
        results.update({prefix + name: float(value) for name, value in metric.compute().items()})
    return results


def _split(data: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    cut = {
        "embeddings": 37,
        "labels": 37,
        "is_query": 37,
        "is_gallery": 37,
        "scores": 90,
        "issame": 90,
    }
    return {k: v[: cut[k]] if rank == 0 else v[cut[k] :] for k, v in data.items()}


def _worker(rank: int, port: int, queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        queue.put((rank, _evaluate([_split(_data(), rank)])))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_gloo_processes_equal_one_process():
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_worker, args=(rank, port, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    results: dict[int, dict[str, float]] = {}
    deadline = time.monotonic() + 120
    try:
        while len(results) < len(processes):
            assert time.monotonic() < deadline, "the gloo workers did not answer within 120 s"
            try:
                rank, values = queue.get(timeout=1)
                results[rank] = values
            except queue_module.Empty:
                failed = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
                assert not failed, f"a worker failed with exit code {failed[0]}"
        for process in processes:
            process.join(timeout=60)
            assert process.exitcode == 0
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
    data = _data()
    expected = _evaluate([_split(data, 0), _split(data, 1)])
    assert results[0] == results[1]
    assert set(results[0]) == set(expected)
    for name, value in expected.items():
        got = results[0][name]
        assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value, abs=1e-6), (
            name
        )
