"""Claim: the class-sharded head holds 1/W of the class weights per rank, Partial FC a tenth of the logits.

CPU, ``--world`` gloo processes (default 2), C=200,000 classes, D=256, N=256 embeddings per rank,
ArcFace margins (m2=0.5, s=64), SGD with momentum 0.9 and weight decay 5e-4. Variants, each in
its own set of processes:

* ``replicated``: every rank holds all C class weights and their momentum, computes its own N
  rows against all of them and all-reduces the weight gradient (what DDP does with a replicated
  head);
* ``sharded``: :class:`marginkit.losses.ShardedMarginHead` on its cosine path
  (``memory_efficient=False``, so the logits exist to be counted): C/W weights per rank, the
  global batch (W·N rows) against the local shard, N-length all-reduces;
* ``sharded_pfc``: the same with Partial FC, ``sample_rate=0.1``.

Per rank: the bytes of the class weights, of their optimizer state and of the logits matrix
(counted from the tensors' sizes: ``numel × element size``), and the median step time
(forward + backward + optimizer step) over ``--iters`` steps after ``--warmup``. Ratios are
against ``replicated`` in the same run.

Usage::

    python benchmarks/model_parallel.py            # C=200000, D=256, N=256, 2 ranks
    python benchmarks/model_parallel.py --quick    # small sizes, seconds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

VARIANTS = ("replicated", "sharded", "sharded_pfc")
MARGIN, SCALE = 0.5, 64.0


def _state_bytes(optimizer: torch.optim.Optimizer, extra: dict | None = None) -> int:
    total = 0
    for state in optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    for value in (extra or {}).values():
        total += value.numel() * value.element_size()
    return total


def _run(rank: int, world: int, store: str, args, variant: str, queue) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    from marginkit.losses import ShardedMarginHead
    from marginkit.ops import (
        combined_margin_logit,
        margin_softmax_loss,
        target_angle,
        target_logsumexp,
    )

    torch.manual_seed(rank)
    embeddings = torch.randn(args.rows, args.dim, requires_grad=True)
    labels = torch.randint(0, args.classes, (args.rows,))
    logits_bytes = 0
    if variant == "replicated":
        weight = torch.nn.Parameter(torch.randn(args.classes, args.dim) * 0.01)
        optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9, weight_decay=5e-4)

        def step():
            nonlocal logits_bytes
            unit, unit_w = F.normalize(embeddings, dim=1), F.normalize(weight, dim=1)
            cos = F.linear(unit, unit_w)
            logits_bytes = cos.numel() * cos.element_size()
            stats = target_logsumexp(cos, labels, SCALE)
            cos_t, theta = target_angle(unit, unit_w[labels])
            phi = combined_margin_logit(cos_t, theta, 1.0, MARGIN, 0.0, "arcface")
            loss = margin_softmax_loss(stats.lse_rest, SCALE * phi).mean()
            optimizer.zero_grad()
            loss.backward()
            dist.all_reduce(weight.grad)
            weight.grad /= world
            optimizer.step()

        weight_bytes = weight.numel() * weight.element_size()

        def state() -> int:
            return _state_bytes(optimizer)

    else:
        rate = 0.1 if variant == "sharded_pfc" else 1.0
        head = ShardedMarginHead(
            args.dim,
            args.classes,
            1.0,
            MARGIN,
            0.0,
            SCALE,
            sample_rate=rate,
            memory_efficient=False,
        )
        optimizer = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        head.attach_optimizer(optimizer)

        def step():
            nonlocal logits_bytes
            loss = head(embeddings, labels)
            used = head.weight_active if rate < 1 else head.weight
            logits_bytes = world * args.rows * used.shape[0] * used.element_size()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        weight_bytes = head.weight.numel() * head.weight.element_size()

        def state() -> int:
            # The compact optimizer state of the sampled rows plus the full per-row store.
            return _state_bytes(optimizer, head._row_state)

    times = []
    for index in range(args.warmup + args.iters):
        dist.barrier()
        started = time.perf_counter()
        step()
        dist.barrier()
        if index >= args.warmup:
            times.append(time.perf_counter() - started)
    if rank == 0:
        queue.put(
            {
                "weights": weight_bytes,
                "state": state(),
                "logits": logits_bytes,
                "time": statistics.median(times),
            }
        )
    dist.destroy_process_group()


def measure(variant: str, args) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    with tempfile.TemporaryDirectory() as folder:
        store = os.path.join(folder, "store")
        processes = [
            context.Process(target=_run, args=(rank, args.world, store, args, variant, queue))
            for rank in range(args.world)
        ]
        for process in processes:
            process.start()
        result = queue.get(timeout=3600)
        for process in processes:
            process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--rows", type=int, default=256, help="embeddings per rank")
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="C=20000, D=64, N=64")
    args = parser.parse_args()
    if args.quick:
        args.classes, args.dim, args.rows, args.iters = 20_000, 64, 64, 3
    print(
        f"C={args.classes:,} D={args.dim} N={args.rows}/rank, {args.world} gloo ranks on CPU, "
        f"torch {torch.__version__}; per rank, from tensor sizes; time = median step"
    )
    results = {variant: measure(variant, args) for variant in VARIANTS}
    base = results["replicated"]
    mib = 2.0**20
    print(
        "| variant | weights | optimizer state | logits | step time | weights × | state × | logits × | time × |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for variant, r in results.items():
        print(
            f"| {variant} | {r['weights'] / mib:.1f} MiB | {r['state'] / mib:.1f} MiB | "
            f"{r['logits'] / mib:.1f} MiB | {r['time'] * 1e3:.0f} ms | "
            f"{r['weights'] / base['weights']:.2f} | {r['state'] / max(base['state'], 1):.2f} | "
            f"{r['logits'] / base['logits']:.2f} | {r['time'] / base['time']:.2f} |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
