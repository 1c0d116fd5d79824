"""A Hydra callback that sums up a multirun: every job's overrides and metrics in one table.

Configured in ``conf/hydra/default.yaml``; after ``python train.py -m loss=arcface,cosface
loss.m=0.3,0.5`` the sweep directory holds ``summary.csv`` and the table is printed. A sweep
over ``seed`` also gets ``summary_over_seeds.csv`` and a table of mean ± std per setting.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# Columns of the printed table (the CSV has every metric).
SHOWN_METRICS = ("test/precision@1", "test/map@r", "test/auc", "test/accuracy")


def _job_number(job_dir: Path) -> tuple[int, str]:
    match = re.match(r"(\d+)", job_dir.name)
    return (int(match.group(1)) if match else 1 << 30, job_dir.name)


def collect_jobs(sweep_dir: Path, metrics_file: str = "metrics.json") -> list[dict[str, Any]]:
    """One row per job directory of ``sweep_dir``: its overrides and its metrics (if any).

    A job directory is one with a ``.hydra/overrides.yaml``; a job without ``metrics_file``
    (it failed) gets ``status="failed"`` and, when it left one, its ``error.txt`` line as
    ``error``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     job = Path(folder, "0_loss=cosface")
        ...     (job / ".hydra").mkdir(parents=True)
        ...     _ = (job / ".hydra" / "overrides.yaml").write_text("- loss=cosface\\n")
        ...     _ = (job / "metrics.json").write_text('{"test/precision@1": 0.9}')
        ...     collect_jobs(Path(folder))
        [{'job': '0_loss=cosface', 'status': 'ok', 'loss': 'cosface', 'test/precision@1': 0.9}]
    """
    rows = []
    job_dirs = sorted(
        (path.parent.parent for path in sweep_dir.glob("**/.hydra/overrides.yaml")),
        key=_job_number,
    )
    for job_dir in job_dirs:
        overrides = OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")
        row: dict[str, Any] = {"job": str(job_dir.relative_to(sweep_dir)), "status": "failed"}
        for override in overrides:
            key, _, value = str(override).partition("=")
            row[key.lstrip("+~")] = value
        metrics_path = job_dir / metrics_file
        if metrics_path.is_file():
            row["status"] = "ok"
            row.update(json.loads(metrics_path.read_text()))
        elif (job_dir / "error.txt").is_file():  # the job's one-line report
            row["error"] = (job_dir / "error.txt").read_text().strip()
        rows.append(row)
    return rows


def write_summary(rows: list[dict[str, Any]], path: Path) -> None:
    """Write ``rows`` as CSV (columns: the union of the rows' keys, in first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {key: "" if row.get(key) is None else row.get(key, "") for key in columns}
            )


def print_summary(rows: list[dict[str, Any]], title: str) -> None:
    """Print the jobs' overrides and main test metrics as a Rich table."""
    from rich.console import Console
    from rich.table import Table

    metrics = [name for name in SHOWN_METRICS if any(name in row for row in rows)]
    fixed = {"job", "status", "error"}
    override_keys: list[str] = []
    for row in rows:
        override_keys += [
            key for key in row if key not in fixed and "/" not in key and key not in override_keys
        ]
    # Overrides every job shares go to the title; the columns show what the sweep varies.
    shared = {
        key: rows[0].get(key)
        for key in override_keys
        if len({str(row.get(key)) for row in rows}) == 1
    }
    override_keys = [key for key in override_keys if key not in shared]
    if shared:
        title += "\n" + " ".join(f"{key}={value}" for key, value in shared.items())
    table = Table(title=title)
    for column in ["job", *override_keys, *metrics, "status"]:
        table.add_column(column, justify="right" if column in metrics else "left")
    for row in rows:
        cells = [str(row.get("job", "")).split("_", 1)[0]]
        cells += [_short(row.get(key, "")) for key in override_keys]
        for name in metrics:
            value = row.get(name)
            cells.append("" if value is None else f"{value:.4f}")
        cells.append(str(row.get("status", "")))
        table.add_row(*cells)
    console = Console()
    if not console.is_terminal:  # a log file or a pipe: do not squeeze the table into 80 columns
        console = Console(width=200)
    console.print(table)


def aggregate_over_seeds(
    rows: list[dict[str, Any]], metrics: tuple[str, ...] = SHOWN_METRICS, key: str = "seed"
) -> list[dict[str, Any]]:
    """Group the finished jobs by their overrides other than ``key``: mean ± std of ``metrics``.

    One row per group, in first-seen order: the group's overrides, ``n`` (the jobs with
    metrics) and, per metric, ``<name>`` (the mean) and ``<name>/std`` (the sample standard
    deviation, ``ddof=1``; 0 for one job).

    Example:
        >>> rows = [{"job": "0", "status": "ok", "loss": "arcface", "seed": "0", "test/map@r": 0.5},
        ...         {"job": "1", "status": "ok", "loss": "arcface", "seed": "1", "test/map@r": 0.7}]
        >>> [(r["loss"], r["n"], round(r["test/map@r"], 3), round(r["test/map@r/std"], 3))
        ...  for r in aggregate_over_seeds(rows)]
        [('arcface', 2, 0.6, 0.141)]
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("status") != "ok":
            continue
        overrides = tuple(
            (name, str(value))
            for name, value in row.items()
            if name not in ("job", "status", key) and "/" not in name
        )
        groups.setdefault(overrides, []).append(row)
    summary = []
    for overrides, members in groups.items():
        entry: dict[str, Any] = dict(overrides) | {"n": len(members)}
        for name in metrics:
            values = [float(m[name]) for m in members if m.get(name) is not None]
            if not values:
                continue
            mean = sum(values) / len(values)
            spread = sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)
            entry[name], entry[f"{name}/std"] = mean, spread**0.5
        summary.append(entry)
    return summary


def print_seed_summary(summary: list[dict[str, Any]], title: str) -> None:
    """Print :func:`aggregate_over_seeds`'s rows as a Rich table of ``mean ± std``."""
    from rich.console import Console
    from rich.table import Table

    metrics = [name for name in SHOWN_METRICS if any(name in row for row in summary)]
    keys: list[str] = []
    for row in summary:
        keys += [k for k in row if "/" not in k and k != "n" and k not in keys]
    keys = [k for k in keys if len({str(row.get(k)) for row in summary}) > 1] or keys[:1]
    table = Table(title=title)
    for column in [*keys, "n", *metrics]:
        table.add_column(column, justify="left" if column in keys else "right")
    for row in summary:
        cells = [_short(row.get(k, "")) for k in keys] + [str(row["n"])]
        for name in metrics:
            mean, std = row.get(name), row.get(f"{name}/std")
            cells.append("" if mean is None else f"{mean:.4f} ± {std:.4f}")
        table.add_row(*cells)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(table)


def _short(value: object) -> str:
    """A sweep value as printed: floats with 4 significant digits."""
    try:
        number = float(str(value))
    except ValueError:
        return str(value)
    return str(value) if str(value).isdigit() else f"{number:.4g}"


class SweepSummary(Callback):
    """After a multirun, write ``<sweep dir>/<filename>`` and print a table of all jobs.

    Args:
        filename: the CSV file written in the sweep directory.
        metrics_file: the file each job writes its metrics to.
    """

    def __init__(self, filename: str = "summary.csv", metrics_file: str = "metrics.json") -> None:
        self.filename = filename
        self.metrics_file = metrics_file

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect_jobs(sweep_dir, self.metrics_file)
        if not rows:
            log.warning("sweep summary: no job directories in %s", sweep_dir)
            return
        path = sweep_dir / self.filename
        write_summary(rows, path)
        print_summary(rows, title=f"sweep {sweep_dir} ({len(rows)} jobs)")
        log.info("sweep summary written to %s", path)
        over_seeds = aggregate_over_seeds(rows)
        if any(row["n"] > 1 for row in over_seeds):  # a sweep over seeds: mean ± std per setting
            seeds_path = path.with_name(f"{path.stem}_over_seeds{path.suffix}")
            write_summary(over_seeds, seeds_path)
            print_seed_summary(over_seeds, title="mean ± std over seeds")
            log.info("mean ± std over seeds written to %s", seeds_path)
