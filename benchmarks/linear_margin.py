"""Claim: the fused normalised-linear margin loss needs the memory of the weights, not of the logits.

Forward + backward of ArcFace (m = 0.5, s = 64) at N=512, D=256, C=100,000 (CPU, float32) for

* ``materialised``: the textbook arithmetic in plain torch: ``F.normalize`` both, ``F.linear``
  to the (N, C) cosines, the margin on the target column (``cos(acos(x) + m)``),
  ``F.cross_entropy`` of the scaled logits;
* ``head``: what a marginkit head does with ``memory_efficient=False``: ``F.normalize`` +
  ``F.linear`` + :func:`marginkit.ops.target_logsumexp` + the margin on N-vectors
  (:func:`~marginkit.ops.target_angle`, :func:`~marginkit.ops.combined_margin_logit`,
  :func:`~marginkit.ops.margin_softmax_loss`);
* ``bare``: the three matrix products alone, ``x·Wᵀ`` and its two gradient products (the floor:
  no normalisation, no softmax);
* ``fused``: :func:`marginkit.ops.linear_margin_cross_entropy`.

Each variant runs in its own fresh processes (``--variant`` is the internal entry point), so
allocator caches and high-water marks do not leak between them: one process times it (median and
quartiles of ``--iters`` steps after ``--warmup``), another measures its peak extra memory, the
most memory one step holds beyond its inputs, gradients included (the resident-set high-water
mark, as in ``benchmarks/margin_ce.py``, with glibc's mmap threshold fixed at 64 KiB so that
freed blocks go back to the OS instead of staying in the heap). The second table is the largest
C whose inputs (weights and embeddings) plus the peak extra memory fit in 8 GiB at N=512, D=512,
from the **measured** extra bytes per class: each variant is measured at two class counts and
the line through them extrapolated. ``--crossover`` times ``head`` against ``fused`` over a range
of C (the "auto" threshold of the heads' ``memory_efficient`` option).

Usage::

    python benchmarks/linear_margin.py            # the full measurement (a few minutes)
    python benchmarks/linear_margin.py --quick    # smaller C and fewer steps (a smoke run)
    python benchmarks/linear_margin.py --crossover
"""

from __future__ import annotations

import argparse
import json
import math

import _harness as harness
import torch
import torch.nn.functional as F

VARIANTS = ("materialised", "head", "bare", "fused")
MARGIN = 0.5
SCALE = 64.0
BUDGET_BYTES = 8 * 2**30


def materialised_arcface(x, weight, label):
    """ArcFace over the whole (N, C) matrix, as commonly written."""
    cosines = F.linear(F.normalize(x, dim=1), F.normalize(weight, dim=1))
    target = cosines.gather(1, label[:, None])
    phi = torch.cos(torch.acos(target.clamp(-1 + 1e-7, 1 - 1e-7)) + MARGIN)
    logits = cosines.scatter(1, label[:, None], phi) * SCALE
    return F.cross_entropy(logits, label)


def head_arcface(x, weight, label):
    """A marginkit head's cosine path: the (N, C) cosines, then N-vectors only."""
    from marginkit.ops import (
        combined_margin_logit,
        margin_softmax_loss,
        target_angle,
        target_logsumexp,
    )

    unit_x, unit_weight = F.normalize(x, dim=1), F.normalize(weight, dim=1)
    rest = target_logsumexp(F.linear(unit_x, unit_weight), label, SCALE)
    cos, theta = target_angle(unit_x, unit_weight[label])
    phi = combined_margin_logit(cos, theta, 1.0, MARGIN, 0.0)
    return margin_softmax_loss(rest.lse_rest, SCALE * phi).mean()


def bare_products(x, weight, label):
    """``x·Wᵀ``; backward with the product itself as gradient: its two gradient products."""
    product = F.linear(x, weight)
    return product, product.detach()


def fused_arcface(x, weight, label):
    from marginkit.ops.linear_margin_cross_entropy import linear_margin_cross_entropy

    return linear_margin_cross_entropy(x, weight, label, 1.0, MARGIN, 0.0, SCALE)


LOSSES = {
    "materialised": materialised_arcface,
    "head": head_arcface,
    "bare": bare_products,
    "fused": fused_arcface,
}


def measure(variant: str, rows: int, dim: int, classes: int, iters: int, warmup: int) -> dict:
    """Run one variant in this process: its timings (``iters > 0``) or its peak extra memory."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, dim, generator=generator).requires_grad_()
    weight = torch.randn(classes, dim, generator=generator).requires_grad_()
    label = torch.randint(0, classes, (rows,), generator=generator)
    loss_fn = LOSSES[variant]

    def step() -> None:
        x.grad = weight.grad = None
        out = loss_fn(x, weight, label)
        if isinstance(out, tuple):
            out[0].backward(out[1])
        else:
            out.backward()

    # Warm-up first: the first custom-op call imports torch._dynamo & co. once per process.
    for _ in range(max(1, warmup)):
        step()
    result = {"variant": variant, "classes": classes, "threads": torch.get_num_threads()}
    if iters == 0:
        x.grad = weight.grad = None
        result["peak_extra_bytes"], result["memory_method"] = harness.measure_peak_extra(
            step, device="cpu"
        )
        return result
    return {
        **result,
        **harness.summarise_times(harness.time_steps(step, iters=iters, device="cpu")),
    }


def _run(variant: str, rows: int, dim: int, classes: int, iters: int, warmup: int) -> dict:
    arguments = ["--variant", variant]
    arguments += ["--rows", str(rows), "--dim", str(dim), "--classes", str(classes)]
    arguments += ["--iters", str(iters), "--warmup", str(warmup)]
    # A fixed mmap threshold switches off glibc's adaptive one, which otherwise keeps freed
    # blocks of up to 32 MiB in the heap after the warm-up, where the resident set before
    # the measured step already counts them.
    extra_env = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)} if iters == 0 else None
    return harness.run_variant_or_exit(
        __file__, arguments, name=f"variant {variant!r}", extra_env=extra_env
    )


def time_and_measure(
    variant: str, rows: int, dim: int, classes: int, iters: int, warmup: int
) -> dict:
    """Time one variant in a fresh process and measure its memory in another."""
    result = _run(variant, rows, dim, classes, iters, warmup) if iters > 0 else {}
    return {**result, **_run(variant, rows, dim, classes, 0, warmup)}


def print_main_table(results: dict, args: argparse.Namespace) -> None:
    bare, materialised, fused = results["bare"], results["materialised"], results["fused"]
    matrix_mib = args.rows * args.classes * 4 / 2**20
    print(
        f"ArcFace forward+backward: N={args.rows}, D={args.dim}, C={args.classes}, float32, cpu "
        f"({fused['threads']} threads), median of {args.iters} after {args.warmup} warm-up; one "
        f"N×C matrix = {matrix_mib:.0f} MiB, weights = {args.classes * args.dim * 4 / 2**20:.0f} "
        f"MiB; memory: {fused['memory_method']}"
    )
    header = (
        f"{'variant':<14}{'time ms':>10}{'q25-q75 ms':>18}{'extra MiB':>11}"
        f"{'time/bare':>11}{'mem/materialised':>18}"
    )
    harness.print_header(header)
    for name in VARIANTS:
        result = results[name]
        print(
            f"{name:<14}{result['median_ms']:>10.1f}"
            f"{result['q25_ms']:>9.1f}-{result['q75_ms']:<8.1f}"
            f"{result['peak_extra_bytes'] / 2**20:>11.0f}"
            f"{result['median_ms'] / bare['median_ms']:>11.2f}"
            f"{result['peak_extra_bytes'] / materialised['peak_extra_bytes']:>18.2f}"
        )
    print(
        "targets: fused extra memory <= 0.25x materialised ({:.2f}), fused time <= 1.3x bare "
        "({:.2f})".format(
            fused["peak_extra_bytes"] / materialised["peak_extra_bytes"],
            fused["median_ms"] / bare["median_ms"],
        )
    )


def print_capacity(args: argparse.Namespace) -> None:
    """Largest C within 8 GiB at N=512, D=512, from the measured extra bytes per class."""
    rows, dim = 512, 512
    small, large = args.fit_classes
    print(
        f"\nlargest C in 8 GiB at N={rows}, D={dim} (float32): inputs (weights + embeddings) + "
        f"peak extra, the extra measured at C={small} and C={large} and extrapolated linearly"
    )
    header = f"{'variant':<14}{'extra B/class':>15}{'extra at C=0 MiB':>18}{'largest C':>14}"
    harness.print_header(header)
    for name in VARIANTS:
        low = time_and_measure(name, rows, dim, small, 0, 1)["peak_extra_bytes"]
        high = time_and_measure(name, rows, dim, large, 0, 1)["peak_extra_bytes"]
        per_class = (high - low) / (large - small)
        intercept = max(0.0, low - per_class * small)
        input_bytes = dim * 4  # one weight row
        largest = (BUDGET_BYTES - intercept - rows * dim * 4) / (per_class + input_bytes)
        print(f"{name:<14}{per_class:>15.0f}{intercept / 2**20:>18.1f}{math.floor(largest):>14,}")
    print(
        f"(the weights and their gradient alone: {2 * dim * 4} B/class, "
        f"{math.floor(BUDGET_BYTES / (2 * dim * 4)):,} classes)"
    )


def print_crossover(args: argparse.Namespace) -> None:
    print(f"head (memory_efficient=False) vs fused, N={args.rows}, D={args.dim}, float32, cpu")
    header = f"{'C':>10}{'head ms':>10}{'fused ms':>10}{'head MiB':>10}{'fused MiB':>11}"
    harness.print_header(header)
    for classes in args.crossover_classes:
        head = time_and_measure("head", args.rows, args.dim, classes, args.iters, args.warmup)
        fused = time_and_measure("fused", args.rows, args.dim, classes, args.iters, args.warmup)
        print(
            f"{classes:>10}{head['median_ms']:>10.1f}{fused['median_ms']:>10.1f}"
            f"{head['peak_extra_bytes'] / 2**20:>10.1f}{fused['peak_extra_bytes'] / 2**20:>11.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--classes", type=int, default=100_000)
    parser.add_argument("--iters", type=int, default=5, help="timed steps (0: memory only)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--fit-classes", type=int, nargs=2, default=(25_000, 50_000))
    parser.add_argument(
        "--crossover-classes",
        type=int,
        nargs="+",
        default=(1_000, 2_000, 5_000, 10_000, 20_000, 50_000),
    )
    parser.add_argument("--quick", action="store_true", help="C=20,000, 2 steps, small fits")
    parser.add_argument("--crossover", action="store_true", help="time head vs fused over C")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant is not None:
        print(
            json.dumps(
                measure(args.variant, args.rows, args.dim, args.classes, args.iters, args.warmup)
            )
        )
        return
    if args.quick:
        args.classes, args.iters, args.fit_classes = 20_000, 2, (4_000, 8_000)
        args.crossover_classes = (1_000, 5_000, 20_000)
    if args.crossover:
        print_crossover(args)
        return
    results = {
        name: time_and_measure(name, args.rows, args.dim, args.classes, args.iters, args.warmup)
        for name in VARIANTS
    }
    print_main_table(results, args)
    print_capacity(args)


if __name__ == "__main__":
    main()
