"""Whether a logged metric is better when larger or smaller (checkpointing, early stopping)."""

from __future__ import annotations

# Metrics for which a smaller value is better; every other logged metric is "higher is better".
LOWER_IS_BETTER = ("eer", "loss", "accuracy_std", "n_queries_without_match")


def metric_mode(name: str) -> str:
    """Return ``"min"`` if a smaller value of metric ``name`` is better, else ``"max"``.

    Example:
        >>> metric_mode("val/precision@1"), metric_mode("val/eer")
        ('max', 'min')
    """
    short = name.rsplit("/", 1)[-1]
    return "min" if short in LOWER_IS_BETTER else "max"
