"""What every benchmark script shares: one variant per fresh process, timing and peak memory.

* :func:`measure_step`: median (and quartiles) of ``iters`` calls of a step after ``warmup``
  calls, and the most memory one step holds beyond what existed before it. CPU: the process's
  resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` right before
  the step; ``ru_maxrss`` where that is unavailable, an upper bound) minus the resident set
  before the step. torch's CPU allocator maps blocks this large straight from the OS and
  returns them on free, so the high-water mark is the step's peak. CUDA:
  ``torch.cuda.max_memory_allocated`` minus the allocation before the step.
  Its parts, for scripts that measure something in between or in other orders:
  :func:`measure_peak_extra`, :func:`time_steps` and :func:`summarise_times`.
* :func:`run_variant`: re-invoke a script in a fresh process (allocator caches and high-water
  marks do not leak between variants) and read the JSON line it prints last;
  :func:`run_variant_or_exit` stops the run when a variant fails.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import torch


def resident_bytes() -> int:
    """The process's current resident set, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_high_water_mark() -> bool:
    """Reset ``VmHWM`` to the current resident set; ``False`` where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def high_water_bytes() -> int:
    """The resident-set high-water mark (``VmHWM``, else ``ru_maxrss``), in bytes."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def add_step_arguments(parser: argparse.ArgumentParser, *, iters: int, warmup: int) -> None:
    """The options of a step over an (N, C) matrix: device, dtype, rows, classes, iters, warmup."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=50_000)
    parser.add_argument("--iters", type=int, default=iters)
    parser.add_argument("--warmup", type=int, default=warmup)


def require_device(device: str) -> None:
    """End the run with a one-line message when ``device`` is ``"cuda"`` and there is no GPU."""
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda needs a CUDA GPU")


def print_header(header: str) -> None:
    """Print a table's header line and a rule as wide as it."""
    print(header)
    print("-" * len(header))


def measure_peak_extra(step: Callable[[], None], *, device: str) -> tuple[int, str]:
    """The most memory one call of ``step`` holds beyond what exists before it, and how.

    Returns the peak extra bytes and the method's name (see the module docstring). The caller
    runs the warm-up first and frees what it should not count (a previous step's gradient).
    """
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before, "torch.cuda.max_memory_allocated"
    before = resident_bytes()
    exact = reset_high_water_mark()
    step()
    peak_extra = high_water_bytes() - before
    return peak_extra, "VmHWM after clear_refs" if exact else "ru_maxrss (upper bound)"


def time_steps(step: Callable[[], None], *, iters: int, device: str) -> list[float]:
    """Seconds taken by each of ``iters`` calls of ``step`` (CUDA: synchronised around each)."""
    cuda = device == "cuda"
    times = []
    for _ in range(iters):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def summarise_times(times: Sequence[float]) -> dict[str, float]:
    """``median_ms``, ``q25_ms`` and ``q75_ms`` of step times given in seconds."""
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {
        "median_ms": statistics.median(times) * 1e3,
        "q25_ms": quartiles[0] * 1e3,
        "q75_ms": quartiles[2] * 1e3,
    }


def measure_step(step: Callable[[], None], *, iters: int, warmup: int, device: str) -> dict:
    """Time ``step`` and measure the peak extra memory of one call (see the module docstring).

    The warm-up runs first: the first call of a custom op imports torch's compiler machinery
    (~150 MiB of Python objects, once per process), which is not memory the step holds.
    """
    for _ in range(max(1, warmup)):
        step()
    peak_extra, memory_method = measure_peak_extra(step, device=device)
    return {
        **summarise_times(time_steps(step, iters=iters, device=device)),
        "peak_extra_mib": peak_extra / 2**20,
        "memory_method": memory_method,
        "threads": torch.get_num_threads(),
    }


def _run_fresh(
    script: str, arguments: Sequence[str], extra_env: Mapping[str, str] | None
) -> subprocess.CompletedProcess:
    """``python <script> <arguments>`` in a fresh process, ``extra_env`` added to the environment."""
    return subprocess.run(
        [sys.executable, os.path.abspath(script), *arguments],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **extra_env} if extra_env else None,
    )


def _last_json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def run_variant(
    script: str, arguments: Sequence[str], *, extra_env: Mapping[str, str] | None = None
) -> dict:
    """Run ``python <script> <arguments>`` in a fresh process; return its last printed JSON line.

    A failing variant gives ``{"error": <last line of its stderr>}`` instead of stopping the run.
    """
    completed = _run_fresh(script, arguments, extra_env)
    if completed.returncode != 0:
        lines = [line for line in completed.stderr.strip().splitlines() if line.strip()]
        return {"error": lines[-1] if lines else f"exit status {completed.returncode}"}
    return _last_json_line(completed.stdout)


def run_variant_or_exit(
    script: str,
    arguments: Sequence[str],
    *,
    name: str,
    extra_env: Mapping[str, str] | None = None,
) -> dict:
    """As :func:`run_variant`, but a failing variant ends the run: ``<name> failed:`` + stderr."""
    completed = _run_fresh(script, arguments, extra_env)
    if completed.returncode != 0:
        sys.exit(f"{name} failed:\n{completed.stderr}")
    return _last_json_line(completed.stdout)
