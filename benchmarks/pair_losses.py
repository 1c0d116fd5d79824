"""Claim: the all-triplets loss needs O(B²) memory and no more time than listing the triplets.

Forward + backward of the triplet loss (margin 0.1) over **every** valid triplet of a P×K batch
(K = 8, D = 128) for

* ``materialised``: what pytorch-metric-learning's ``TripletMarginLoss`` does with its
  all-triplets default, in plain torch: the B×B distance matrix, every (a, p, n) index triplet
  from the B×B×B mask ``same[a, p] & ~same[a, n]`` (``torch.where``), gathered distances,
  ``relu(d_ap − d_an + m).mean()``;
* ``ours``: :class:`marginkit.losses.TripletLossWithMiner` with the default
  :class:`~marginkit.miners.AllTripletsMiner`, which reduces over the triplets blockwise without
  listing them (``torch.ops.marginkit.all_triplets_loss_sum``).

Each (variant, P) runs in its own fresh process (``--variant``/``--labels`` are the internal
entry point), so allocator caches and high-water marks do not leak between them; the parent
prints absolute numbers and ratios measured in one run, checks that both variants give the same
loss, and shows how the memory grows from the smallest to the largest batch (×16 for B², ×64
for B³ when B grows ×4).

* time: median (and quartiles) of ``--iters`` steps after ``--warmup`` steps, and the best
  step (the least disturbed by other processes on a shared machine); the features' gradient is
  cleared before every step. Ratios use the medians.
* peak extra memory: CPU, the resident-set high-water mark of one step (``VmHWM`` reset through
  ``/proc/self/clear_refs``) minus the resident set before it, with glibc told to map every
  allocation above 128 KiB from the OS and return it on free (``MALLOC_MMAP_THRESHOLD_``), so
  blocks freed by the warm-up are not silently reused; CUDA, ``torch.cuda.max_memory_allocated``
  minus the allocation before the step.

Usage::

    python benchmarks/pair_losses.py            # P = 32, 64, 128 (B = 256 .. 1024), CPU
    python benchmarks/pair_losses.py --quick    # P = 8, 16, 32, fewer steps (a smoke check)
    python benchmarks/pair_losses.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys

import _harness as harness
import torch

VARIANTS = ("materialised", "ours")
MARGIN = 0.1


def materialised_triplet_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The all-triplets loss with every triplet listed (pytorch-metric-learning's recipe)."""
    sq_norm = features.square().sum(1)
    sq = (sq_norm[:, None] + sq_norm[None, :] - 2.0 * features @ features.T).clamp_min(0.0)
    distances = torch.where(sq > 1e-12, sq.clamp_min(1e-12).sqrt(), 0.0)
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    anchors, positives, negatives = torch.where(positive[:, :, None] & ~same[:, None, :])
    d_ap, d_an = distances[anchors, positives], distances[anchors, negatives]
    return torch.relu(d_ap - d_an + MARGIN).mean()


def loss_function(variant: str):
    if variant == "materialised":
        return materialised_triplet_loss
    from marginkit.losses import TripletLossWithMiner

    return TripletLossWithMiner(margin=MARGIN)


def measure(variant: str, n_labels: int, args: argparse.Namespace) -> dict:
    """Run one variant at P = ``n_labels`` in this process; return time, memory and the loss."""
    generator = torch.Generator().manual_seed(0)
    batch = n_labels * args.instances
    features = torch.randn(batch, args.dim, generator=generator).to(args.device)
    features.requires_grad_()
    labels = torch.arange(n_labels).repeat_interleave(args.instances).to(args.device)
    loss_fn = loss_function(variant)
    value = []

    def step() -> None:
        features.grad = None
        loss = loss_fn(features, labels)
        loss.backward()
        value.append(loss.item())

    for _ in range(max(1, args.warmup)):  # the first call imports torch's custom-op machinery
        step()
    features.grad = None
    peak_extra, memory_method = harness.measure_peak_extra(step, device=args.device)
    times = harness.time_steps(step, iters=args.iters, device=args.device)
    summary = harness.summarise_times(times)
    return {
        "variant": variant,
        "n_labels": n_labels,
        "batch": batch,
        "median_ms": summary["median_ms"],
        "best_ms": min(times) * 1e3,
        "q25_ms": summary["q25_ms"],
        "q75_ms": summary["q75_ms"],
        "peak_extra_mib": max(peak_extra, 0) / 2**20,
        "loss": value[-1],
        "memory_method": memory_method,
        "threads": torch.get_num_threads(),
    }


def run_all(args: argparse.Namespace) -> list[dict]:
    results = []
    for n_labels in args.labels:
        for variant in VARIANTS:
            arguments = ["--variant", variant]
            arguments += ["--labels", str(n_labels), "--instances", str(args.instances)]
            arguments += ["--dim", str(args.dim), "--device", args.device]
            arguments += ["--iters", str(args.iters), "--warmup", str(args.warmup)]
            result = harness.run_variant_or_exit(
                __file__,
                arguments,
                name=f"variant {variant!r} at P={n_labels}",
                extra_env={"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)},
            )
            results.append(result)
    return results


def print_table(results: list[dict], args: argparse.Namespace) -> None:
    print(
        f"all-triplets triplet loss forward+backward: P×K with K={args.instances}, D={args.dim}, "
        f"float32, {args.device} ({results[0]['threads']} threads), median of {args.iters} "
        f"after {args.warmup} warm-up; memory: {results[0]['memory_method']}"
    )
    header = (
        f"{'P×K':>8}{'B':>6}{'triplets':>11}  {'variant':<13}{'time ms':>10}{'q25-q75 ms':>16}"
        f"{'best ms':>9}{'extra MiB':>11}{'time/mat':>10}{'mem/mat':>9}"
    )
    harness.print_header(header)
    by_key = {(r["variant"], r["n_labels"]): r for r in results}
    for n_labels in args.labels:
        reference = by_key[("materialised", n_labels)]
        batch = reference["batch"]
        triplets = batch * (args.instances - 1) * (batch - args.instances)
        for variant in VARIANTS:
            result = by_key[(variant, n_labels)]
            print(
                f"{f'{n_labels}×{args.instances}':>8}{batch:>6}{triplets:>11,}  {variant:<13}"
                f"{result['median_ms']:>10.1f}{result['q25_ms']:>8.1f}-{result['q75_ms']:<7.1f}"
                f"{result['best_ms']:>9.1f}{result['peak_extra_mib']:>11.1f}"
                f"{result['median_ms'] / reference['median_ms']:>10.2f}"
                f"{_ratio(result['peak_extra_mib'], reference['peak_extra_mib']):>9}"
            )
        ours = by_key[("ours", n_labels)]
        difference = abs(ours["loss"] - reference["loss"])
        if difference > 1e-4 * max(1.0, abs(reference["loss"])):
            sys.exit(f"P={n_labels}: the losses differ ({ours['loss']} vs {reference['loss']})")
    small, large = min(args.labels), max(args.labels)
    if small != large:
        scale = large / small
        print(
            f"memory growth P={small}→{large} (B ×{scale:g}; B² predicts ×{scale**2:g}, "
            f"B³ ×{scale**3:g}):"
        )
        for variant in VARIANTS:
            grow = _ratio(
                by_key[(variant, large)]["peak_extra_mib"],
                by_key[(variant, small)]["peak_extra_mib"],
                digits=1,
            )
            print(f"  {variant:<13} ×{grow}")
    ours, reference = by_key[("ours", large)], by_key[("materialised", large)]
    print(
        f"targets at P={large}: time/materialised <= 1.0 "
        f"({ours['median_ms'] / reference['median_ms']:.2f}), memory/materialised <= 0.25 "
        f"({_ratio(ours['peak_extra_mib'], reference['peak_extra_mib'])}); losses equal to 1e-4"
    )


def _ratio(numerator: float, denominator: float, digits: int = 3) -> str:
    """``numerator / denominator``, or "n/a" when the denominator is below measurement (0.05 MiB)."""
    return f"{numerator / denominator:.{digits}f}" if denominator >= 0.05 else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--labels", type=int, nargs="+", default=None, help="the P values")
    parser.add_argument("--instances", type=int, default=8, help="K")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="P = 8, 16, 32 and 3 steps")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    harness.require_device(args.device)
    if args.quick:
        args.labels = args.labels or [8, 16, 32]
        args.iters, args.warmup = min(args.iters, 3), 1
    args.labels = args.labels or [32, 64, 128]
    if args.variant is not None:
        print(json.dumps(measure(args.variant, args.labels[0], args)))
        return
    print_table(run_all(args), args)


if __name__ == "__main__":
    main()
