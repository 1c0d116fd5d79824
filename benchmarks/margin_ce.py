"""Claim: the fused margin cross-entropy is as fast as plain cross-entropy and leaner in memory.

Forward + backward at N=1024, C=50,000 (ArcFace m=0.5, s=64) for

* ``plain``: ``F.cross_entropy(scale * x, label)``, no margin at all (the floor to beat);
* ``composed``: the common ArcMarginProduct-style recipe, sqrt / where / one-hot blend over all
  N×C logits, then ``F.cross_entropy``;
* ``fused``: :func:`marginkit.ops.margin_cross_entropy` (chunked torch on the CPU, Triton on CUDA).

Each variant runs in its own fresh process (``--variant`` is the internal entry point), so
allocator caches and high-water marks do not leak between them; the parent prints absolute
numbers and ratios measured in one run.

* time: median (and quartiles) of ``--iters`` forward+backward steps after ``--warmup`` steps;
  ``x.grad`` is cleared before every step so each one allocates its gradient.
* peak extra memory: the most memory one step (after the warm-up, whose first call imports
  torch's custom-op machinery once per process) holds beyond its inputs. CPU: the process's
  resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` once the inputs
  exist, ``ru_maxrss`` where that is unavailable) minus the resident set before the step; torch's
  CPU allocator maps blocks this large straight from the OS and returns them on free, so the
  high-water mark is the step's peak. CUDA: ``torch.cuda.max_memory_allocated`` minus the
  allocation before the step.

Usage::

    python benchmarks/margin_ce.py                      # CPU, N=1024, C=50000, float32
    python benchmarks/margin_ce.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

VARIANTS = ("plain", "composed", "fused")
MARGIN = 0.5
SCALE = 64.0


def composed_arcface_loss(cosine: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """ArcFace by composition over the whole matrix, as commonly written (with its fallback)."""
    sine = torch.sqrt((1.0 - cosine.pow(2)).clamp(0.0, 1.0))
    shifted = cosine * math.cos(MARGIN) - sine * math.sin(MARGIN)
    threshold, below = math.cos(math.pi - MARGIN), cosine - MARGIN * math.sin(MARGIN)
    shifted = torch.where(cosine > threshold, shifted, below)
    one_hot = torch.zeros_like(cosine).scatter_(1, label[:, None], 1.0)
    logits = (one_hot * shifted + (1.0 - one_hot) * cosine) * SCALE
    return F.cross_entropy(logits, label)


def loss_function(variant: str):
    if variant == "plain":
        return lambda x, label: F.cross_entropy(SCALE * x, label)
    if variant == "composed":
        return composed_arcface_loss
    from marginkit.ops import margin_cross_entropy

    return lambda x, label: margin_cross_entropy(
        x, label, 1.0, MARGIN, 0.0, SCALE, margin_fallback="arcface"
    )


def make_inputs(rows: int, classes: int, dtype: torch.dtype, device: str):
    """Cosine-like logits in [-0.3, 0.3] with targets at 0.5, created without temporaries."""
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.empty(rows, classes, dtype=dtype, device=device)
    x.uniform_(-0.3, 0.3, generator=generator)
    label = torch.randint(0, classes, (rows,), device=device, generator=generator)
    x[torch.arange(rows, device=device), label] = 0.5
    return x.requires_grad_(), label


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _high_water_bytes() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(variant: str, args: argparse.Namespace) -> dict:
    """Run one variant in this process; return its timings and peak extra memory."""
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    cuda = args.device == "cuda"
    x, label = make_inputs(args.rows, args.classes, dtype, args.device)
    loss_fn = loss_function(variant)

    def step() -> None:
        x.grad = None
        loss_fn(x, label).backward()

    # Warm-up first: the first call of a custom op imports torch._dynamo & co. (~150 MiB of
    # Python objects, once per process), which is not memory the step holds.
    for _ in range(max(1, args.warmup)):
        step()
    x.grad = None
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak_extra = torch.cuda.max_memory_allocated() - before
        memory_method = "torch.cuda.max_memory_allocated"
    else:
        before = _resident_bytes()
        exact = _reset_high_water_mark()
        step()
        peak_extra = _high_water_bytes() - before
        memory_method = "VmHWM after clear_refs" if exact else "ru_maxrss (upper bound)"

    times = []
    for _ in range(args.iters):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {
        "variant": variant,
        "median_ms": statistics.median(times) * 1e3,
        "q25_ms": quartiles[0] * 1e3,
        "q75_ms": quartiles[2] * 1e3,
        "peak_extra_mib": peak_extra / 2**20,
        "memory_method": memory_method,
        "threads": torch.get_num_threads(),
    }


def run_all(args: argparse.Namespace) -> list[dict]:
    results = []
    for variant in VARIANTS:
        command = [sys.executable, os.path.abspath(__file__), "--variant", variant]
        command += ["--device", args.device, "--dtype", args.dtype]
        command += ["--rows", str(args.rows), "--classes", str(args.classes)]
        command += ["--iters", str(args.iters), "--warmup", str(args.warmup)]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            sys.exit(f"variant {variant!r} failed:\n{completed.stderr}")
        results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    return results


def print_table(results: list[dict], args: argparse.Namespace) -> None:
    by_name = {result["variant"]: result for result in results}
    plain, composed = by_name["plain"], by_name["composed"]
    matrix_mib = args.rows * args.classes * torch.finfo(getattr(torch, args.dtype)).bits / 8 / 2**20
    print(
        f"margin cross-entropy forward+backward: N={args.rows}, C={args.classes}, {args.dtype}, "
        f"{args.device} ({results[0]['threads']} threads), median of {args.iters} after "
        f"{args.warmup} warm-up; one N×C matrix = {matrix_mib:.0f} MiB; "
        f"memory: {results[0]['memory_method']}"
    )
    header = (
        f"{'variant':<10}{'time ms':>10}{'q25-q75 ms':>16}{'extra MiB':>11}"
        f"{'time/plain':>12}{'mem/plain':>11}{'composed/x':>12}"
    )
    print(header)
    print("-" * len(header))
    for result in results:
        print(
            f"{result['variant']:<10}{result['median_ms']:>10.1f}"
            f"{result['q25_ms']:>8.1f}-{result['q75_ms']:<7.1f}"
            f"{result['peak_extra_mib']:>11.0f}"
            f"{result['median_ms'] / plain['median_ms']:>12.2f}"
            f"{result['peak_extra_mib'] / plain['peak_extra_mib']:>11.2f}"
            f"{composed['median_ms'] / result['median_ms']:>12.2f}"
        )
    fused = by_name["fused"]
    print(
        "targets: fused time/plain <= 1.0 ({:.2f}), fused mem/plain <= 0.6 ({:.2f}), "
        "composed/fused >= 5 ({:.1f})".format(
            fused["median_ms"] / plain["median_ms"],
            fused["peak_extra_mib"] / plain["peak_extra_mib"],
            composed["median_ms"] / fused["median_ms"],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=50_000)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda needs a CUDA GPU")
    if args.variant is not None:
        print(json.dumps(measure(args.variant, args)))
        return
    print_table(run_all(args), args)


if __name__ == "__main__":
    main()
