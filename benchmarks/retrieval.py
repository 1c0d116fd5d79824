"""Leave-one-out retrieval: ``RetrievalMetrics`` against faiss's exact ``IndexFlatIP`` search.

Claim: exact retrieval metrics over N items of dimension 128 (1,000 classes) take at most 1.5×
the time of faiss's exact flat search for the same neighbours, use at most 1 GB of extra memory
at N = 20,000 and grow sub-quadratically (not as an N × N matrix) at N = 100,000, and give the
same precision@1.

Every measurement runs in a fresh process (spawned), so that peak memory is its own:
"extra memory" is the peak resident set size during the call minus the resident size just
before it (data loaded, libraries imported). Repeats of the methods are interleaved and the table
shows the minimum and the median wall time; ratios compare minima, measured in this one run.

Methods (same data, same number of threads):

- ``ours, all metrics``: ``RetrievalMetrics(top_k=(1, 5, 10))`` update + compute, i.e. k = 10
  neighbours for every query and R (same-class items) for ``r_precision`` / ``map@r``.
- ``ours, @k metrics``: ``metrics=("precision", "cmc", "map")``: 10 neighbours per query.
- ``faiss k=…``: normalise, ``IndexFlatIP.add`` and ``search`` with k + 1 neighbours (the first
  is the query itself), once with k = 10 and once with k = the largest R, the neighbours the
  full metric set needs. precision@1 is then computed from faiss's neighbours (not timed).

Usage:
    python benchmarks/retrieval.py                    # N = 20,000 and 100,000
    python benchmarks/retrieval.py --sizes 20000 --repeats 5

Without faiss installed, the faiss rows say so and the rest still runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

TOP_K = (1, 5, 10)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def make_data(n: int, dim: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian classes: centres ~ N(0, I), items = centre + 1.5 · N(0, I)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=generator)
    labels = torch.randint(0, classes, (n,), generator=generator)
    embeddings = centres[labels] + 1.5 * torch.randn(n, dim, generator=generator)
    return embeddings, labels


def _precision_at_1(neighbours: torch.Tensor, labels: torch.Tensor) -> float:
    """precision@1 over queries with at least one same-label item, from (N, k+1) neighbours."""
    n = labels.numel()
    own = neighbours == torch.arange(n).unsqueeze(1)
    first_other = torch.where(own[:, 0], neighbours[:, 1], neighbours[:, 0])
    has_match = torch.bincount(labels)[labels] > 1
    return float((labels[first_other] == labels)[has_match].double().mean())


def _measure(method: str, k: int, path: str, threads: int, queue) -> None:
    """Child process: load the data, run ``method`` once, report time, extra memory, p@1."""
    torch.set_num_threads(threads)
    embeddings, labels = torch.load(path)
    if method.startswith("faiss"):
        import faiss

        faiss.omp_set_num_threads(threads)
    else:
        from marginkit.metrics import RetrievalMetrics
    peak_reset = _reset_peak()
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    if method.startswith("faiss"):
        data = embeddings.numpy().copy()
        faiss.normalize_L2(data)
        index = faiss.IndexFlatIP(data.shape[1])
        index.add(data)
        _, found = index.search(data, k + 1)
        seconds = time.perf_counter() - start
        precision = _precision_at_1(torch.from_numpy(found).long(), labels)
    else:
        metrics = None if method == "ours, all metrics" else ("precision", "cmc", "map")
        metric = RetrievalMetrics(top_k=TOP_K, metrics=metrics)
        metric.update(embeddings, labels)
        result = metric.compute()
        seconds = time.perf_counter() - start
        precision = float(result["precision@1"])
    extra_mib = (_status_kib("VmHWM") - before) / 1024
    queue.put((seconds, extra_mib if peak_reset else float("nan"), precision))


def run_one(method: str, k: int, path: str, threads: int) -> tuple[float, float, float]:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(method, k, path, threads, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    has_faiss = importlib.util.find_spec("faiss") is not None
    versions = f"torch {torch.__version__}"
    if has_faiss:
        import faiss

        versions += f", faiss {faiss.__version__}"
    print(
        f"{versions}; {args.threads} threads; {os.cpu_count()} CPUs; dim {args.dim}; "
        f"{args.classes} classes; min/median of {args.repeats} interleaved runs\n"
    )
    if not has_faiss:
        print("faiss not installed (pip install faiss-cpu): only our rows are measured\n")

    rows = []
    for n in args.sizes:
        embeddings, labels = make_data(n, args.dim, args.classes)
        max_r = int(torch.bincount(labels).max()) - 1
        methods = [("ours, all metrics", max(max(TOP_K), max_r)), ("ours, @k metrics", max(TOP_K))]
        if has_faiss:
            methods += [("faiss k=10", max(TOP_K)), (f"faiss k={max_r} (max R)", max_r)]
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "data.pt")
            torch.save((embeddings, labels), path)
            runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _ in methods}
            for _ in range(args.repeats):
                for name, k in methods:
                    runs[name].append(run_one(name, k, path, args.threads))
                    print(f"N={n:,} {name}: {runs[name][-1][0]:.2f} s", file=sys.stderr, flush=True)
        faiss_time = {}
        for name, k in methods:
            times = [seconds for seconds, _, _ in runs[name]]
            if name.startswith("faiss"):
                faiss_time[k] = min(times)
            rows.append(
                (
                    n,
                    name,
                    k,
                    min(times),
                    statistics.median(times),
                    max(extra for _, extra, _ in runs[name]),
                    runs[name][0][2],
                )
            )
        for index, row in enumerate(rows):
            if row[0] == n and not row[1].startswith("faiss"):
                rows[index] = (*row, faiss_time.get(row[2]))

    print(
        "| N | method | neighbours k | time min (s) | time median (s) | × faiss (same k) "
        "| extra peak memory (MiB) | precision@1 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        n, name, k, best, median, extra, precision = row[:7]
        ratio = f"{best / row[7]:.2f}" if len(row) > 7 and row[7] else "–"
        print(
            f"| {n:,} | {name} | {k} | {best:.2f} | {median:.2f} | {ratio} | {extra:.0f} "
            f"| {precision:.6f} |"
        )


if __name__ == "__main__":
    main()
