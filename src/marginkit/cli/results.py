"""The results table every command prints: a row per metric, a column per stage.

Rows are grouped (retrieval, then verification), counts print as integers, the monitored
metric is marked, ``tar@far`` values the pair list cannot resolve are flagged, and notes below
the table say where the checkpoints are and whether the model beats the raw inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from marginkit.cli.options import BASELINE_PREFIX

STAGES = (("val", "best val"), ("test", "test"), ("baseline", "raw inputs (test)"))
VERIFICATION = ("auc", "eer", "accuracy", "accuracy_std")
COUNTS = ("n_queries_without_match",)
TAR_AT_FAR = "tar@far="


@dataclass
class RunFacts:
    """What the table's marks and notes need besides the metrics.

    Attributes:
        monitor: the monitored metric (``val/map@r``), marked in the table.
        best_epoch: the epoch (0-based) of the best validation value, shown in its header.
        negative_pairs: per stage (``val``, ``test``), the number of negative pairs of its
            verification pair list: a FAR below ``1 / negative_pairs`` cannot be resolved.
        checkpoints: ``(name, path)`` pairs printed under the table.
    """

    monitor: str | None = None
    best_epoch: int | None = None
    negative_pairs: dict[str, int] = field(default_factory=dict)
    checkpoints: Sequence[tuple[str, str]] = ()


def is_verification(name: str) -> bool:
    """Whether ``name`` (without stage) is a verification metric (else a retrieval one).

    Example:
        >>> is_verification("tar@far=0.001"), is_verification("map@r")
        (True, False)
    """
    return name in VERIFICATION or name.startswith(TAR_AT_FAR)


def unresolved_far(name: str, negative_pairs: int | None) -> float | None:
    """The smallest FAR ``negative_pairs`` negatives resolve if ``name``'s FAR is below it.

    With N negative pairs the false-accept rate moves in steps of 1/N: a TAR at FAR 1e-4 from
    1,000 negatives is the TAR at FAR 0, not at 1e-4.

    Example:
        >>> unresolved_far("tar@far=0.0001", 1000), unresolved_far("tar@far=0.01", 1000)
        (0.001, None)
    """
    if not name.startswith(TAR_AT_FAR) or not negative_pairs:
        return None
    far = float(name[len(TAR_AT_FAR) :])
    smallest = 1.0 / negative_pairs
    return smallest if far < smallest else None


def negative_pair_count(pairs: object) -> int:
    """The number of negative pairs (``issame`` false) of a verification pair list."""
    issame = pairs.issame
    if hasattr(issame, "sum"):
        return int(len(issame) - int(issame.sum()))
    return sum(not bool(same) for same in issame)


def _cell(name: str, value: float | None) -> str:
    if value is None:
        return ""
    if not math.isfinite(value):
        return "n/a"
    return f"{round(value)}" if name in COUNTS else f"{value:.4f}"


def worse_than_raw(metrics: dict[str, float], monitor: str | None) -> str | None:
    """A sentence when the model's test value of the monitored metric is worse than the raw
    inputs' (``baseline/``), else None.

    Example:
        >>> worse_than_raw({"test/map@r": 0.60, "baseline/map@r": 0.62}, "val/map@r")
        'the model does worse than the raw inputs on test map@r: 0.6000 vs 0.6200'
    """
    from marginkit.models.metric_direction import metric_mode

    if not monitor or "/" not in monitor:
        return None
    name = monitor.split("/", 1)[1]
    model, raw = metrics.get(f"test/{name}"), metrics.get(f"{BASELINE_PREFIX}{name}")
    if model is None or raw is None or not (math.isfinite(model) and math.isfinite(raw)):
        return None
    worse = model < raw if metric_mode(monitor) == "max" else model > raw
    if not worse:
        return None
    return f"the model does worse than the raw inputs on test {name}: {model:.4f} vs {raw:.4f}"


def print_metrics(
    metrics: dict[str, float], title: str = "metrics", facts: RunFacts | None = None
) -> None:
    """Print a table: a row per metric (retrieval, then verification), a column per stage
    (best val, test, raw baseline), and the notes of ``facts`` below it."""
    from rich.console import Console
    from rich.table import Table

    facts = facts or RunFacts()
    names = sorted({key.split("/", 1)[1] for key in metrics if "/" in key})
    stages = [(s, h) for s, h in STAGES if any(k.startswith(f"{s}/") for k in metrics)]
    table = Table(title=title)
    table.add_column("metric")
    for stage, header in stages:
        if stage == "val" and facts.best_epoch is not None:
            header = f"{header} (epoch {facts.best_epoch})"
        table.add_column(header, justify="right")
    monitored = facts.monitor.split("/", 1)[1] if facts.monitor else None
    flagged: dict[str, float] = {}
    for group in (False, True):
        rows = [name for name in names if is_verification(name) == group]
        if rows and group and table.row_count:
            table.add_section()
        for name in rows:
            cells = []
            for stage, _ in stages:
                cell = _cell(name, metrics.get(f"{stage}/{name}"))
                pairs_stage = "test" if stage == "baseline" else stage
                smallest = unresolved_far(name, facts.negative_pairs.get(pairs_stage))
                if cell and smallest is not None:
                    cell += " *"
                    flagged[pairs_stage] = smallest
                cells.append(cell)
            label = f"{name} (monitored)" if name == monitored else name
            table.add_row(label, *cells)
    console = Console()
    console.print(table)
    for stage, smallest in flagged.items():
        console.print(
            f"* {stage}: {facts.negative_pairs[stage]} negative pairs resolve FARs down to "
            f"{smallest:.2g} only; the TAR shown is the TAR at a FAR of 0"
        )
    note = worse_than_raw(metrics, facts.monitor)
    if note:
        console.print(f"note: {note}")
    for name, path in facts.checkpoints:
        console.print(f"{name}: {path}")
