"""Lazy matplotlib access for the metrics' ``plot()`` methods (matplotlib is optional)."""

from __future__ import annotations

from typing import Any


def import_pyplot() -> Any:
    """Return ``matplotlib.pyplot`` or raise ``ModuleNotFoundError`` saying how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ModuleNotFoundError as error:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError(
            "`plot()` needs matplotlib: `pip install matplotlib` (or `pip install marginkit[plot]`)"
        ) from error
    return plt


def figure_and_axes(ax: Any | None) -> tuple[Any, Any]:
    """Return ``(fig, ax)``: a new figure and axes when ``ax`` is None, else ``ax``'s figure."""
    plt = import_pyplot()
    if ax is None:
        fig, ax = plt.subplots()
        return fig, ax
    return ax.get_figure(), ax
