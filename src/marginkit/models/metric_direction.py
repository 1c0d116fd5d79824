"""Whether a logged metric is better when larger or smaller (checkpointing, early stopping).

The directions are the metrics' own (:data:`marginkit.metrics.direction.HIGHER_IS_BETTER`);
a name the map does not know (a loss's ``train/<key>`` log) counts as higher is better.
"""

from __future__ import annotations

from marginkit.metrics.direction import higher_is_better


def metric_mode(name: str) -> str:
    """Return ``"min"`` if a smaller value of metric ``name`` is better, else ``"max"``.

    Example:
        >>> metric_mode("val/precision@1"), metric_mode("val/eer")
        ('max', 'min')
    """
    return "min" if higher_is_better(name) is False else "max"
