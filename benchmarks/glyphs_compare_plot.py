"""The README's glyphs comparison: a markdown table of mean ± std per loss and a bar chart.

Reads the job directories of a sweep (or of single runs) that hold ``.hydra/overrides.yaml`` and
``metrics.json``, e.g. ``multirun/glyphs_compare/<date>`` after

    python train.py -m experiment=glyphs_compare seed=0,1,2
    python train.py -m experiment=glyphs_scale seed=0,1,2

and groups them by their overrides other than ``seed``:

    python benchmarks/glyphs_compare_plot.py multirun/glyphs_compare/<date> [more dirs] \
        --out docs/figures/glyphs_compare.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from marginkit.cli.sweep_summary import aggregate_over_seeds, collect_jobs

METRICS = ("test/map@r", "test/precision@1")


def _setting(row: dict) -> str:
    name = row.get("loss", "arcface")
    if "loss.s" in row:
        name += f" s={row['loss.s']}"
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("glyphs_compare.png"))
    parser.add_argument("--title", default="glyphs: test MAP@R, mean ± std over seeds")
    args = parser.parse_args()
    rows = [row for folder in args.dirs for row in collect_jobs(folder)]
    for row in rows:  # single runs name their job by their directory; the sweep by overrides
        row.pop("run_name", None)
        row.pop("trainer.max_epochs", None)
        row.pop("torch_threads", None)
        row.pop("callbacks.progress_bar", None)
        row.pop("experiment", None)
    summary = sorted(aggregate_over_seeds(rows, METRICS), key=lambda r: -r["test/map@r"])
    print("| loss | seeds | test MAP@R | test precision@1 |")
    print("|---|---|---|---|")
    for row in summary:
        print(
            f"| {_setting(row)} | {row['n']} | {row['test/map@r']:.3f} ± "
            f"{row['test/map@r/std']:.3f} | {row['test/precision@1']:.3f} ± "
            f"{row['test/precision@1/std']:.3f} |"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.4 * len(summary) + 1.2))
    names = [f"{_setting(row)} (n={row['n']})" for row in summary][::-1]
    means = [row["test/map@r"] for row in summary][::-1]
    stds = [row["test/map@r/std"] for row in summary][::-1]
    ax.errorbar(means, names, xerr=stds, fmt="o", capsize=4, color="tab:blue")
    ax.set_xlabel("test MAP@R (mean ± std over n seeds; the axis does not start at 0)")
    ax.set_title(args.title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
