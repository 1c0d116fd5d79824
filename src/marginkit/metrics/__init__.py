"""Retrieval and verification metrics (torchmetrics classes), their functional twins, and
:func:`plot_retrieval` (queries and their nearest items).

The names load on first use (PEP 562), so that :mod:`marginkit.metrics.direction` — read by the
command line before torch loads — imports nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "RetrievalMetrics": "marginkit.metrics.retrieval",
    "VerificationMetrics": "marginkit.metrics.verification",
    "nearest_items": "marginkit.metrics.retrieval_plot",
    "plot_retrieval": "marginkit.metrics.retrieval_plot",
}

__all__ = ["RetrievalMetrics", "VerificationMetrics", "functional", "nearest_items", "plot_retrieval"]


def __getattr__(name: str) -> Any:
    if name == "functional":
        return importlib.import_module("marginkit.metrics.functional")
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'marginkit.metrics' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
