"""The results table every command prints: a row per metric, a column per stage."""

from __future__ import annotations


def print_metrics(metrics: dict[str, float], title: str = "metrics") -> None:
    """Print a table: a row per metric, a column per stage (best val, test, raw baseline)."""
    from rich.console import Console
    from rich.table import Table

    columns = [("val", "best val"), ("test", "test"), ("baseline", "raw inputs (test)")]
    names = sorted({key.split("/", 1)[1] for key in metrics if "/" in key})
    stages = [(s, h) for s, h in columns if any(k.startswith(f"{s}/") for k in metrics)]
    table = Table(title=title)
    table.add_column("metric")
    for _, header in stages:
        table.add_column(header, justify="right")
    for name in names:
        cells = []
        for stage, _ in stages:
            value = metrics.get(f"{stage}/{name}")
            cells.append("" if value is None else f"{value:.4f}")
        table.add_row(name, *cells)
    Console().print(table)
