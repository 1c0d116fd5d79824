"""A Hydra callback that sums up a multirun: every job's overrides and metrics in one table.

Configured in ``conf/hydra/default.yaml``; after ``python train.py -m loss=arcface,cosface
loss.m=0.3,0.5`` the sweep directory holds ``summary.csv`` and the table is printed.
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
