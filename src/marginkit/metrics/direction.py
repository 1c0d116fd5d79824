"""Which way each metric improves: one map, owned by the metrics, read by checkpointing.

Keys are metric names without their parameter: ``precision@5`` is ``precision``,
``tar@far=0.001`` is ``tar@far``; ``map@r`` is its own name. The metric classes expose the
entries of their results (:attr:`RetrievalMetrics.higher_is_better_by_name`,
:attr:`VerificationMetrics.higher_is_better_by_name`); their torchmetrics ``higher_is_better``
is ``None`` because each returns metrics of both directions (EER and ``accuracy_std`` are
better when smaller).
"""

from __future__ import annotations

from collections.abc import Iterable

#: ``True`` where a larger value is better, ``False`` where a smaller one is.
HIGHER_IS_BETTER: dict[str, bool] = {
    # retrieval (RetrievalMetrics, retrieval_metrics)
    "precision": True,
    "cmc": True,
    "map": True,
    "r_precision": True,
    "map@r": True,
    "n_queries_without_match": False,
    # verification (VerificationMetrics, verification_metrics)
    "auc": True,
    "eer": False,
    "tar@far": True,
    "accuracy": True,
    "accuracy_std": False,
    # training
    "loss": False,
}


def higher_is_better(name: str) -> bool | None:
    """Whether a larger value of metric ``name`` is better; ``None`` for a name not in the map.

    ``name`` may carry a stage prefix (``val/eer``) and a parameter (``precision@1``,
    ``tar@far=0.01``).

    Example:
        >>> higher_is_better("val/eer"), higher_is_better("precision@5")
        (False, True)
        >>> higher_is_better("test/tar@far=0.001"), higher_is_better("lr") is None
        (True, True)
    """
    short = name.rsplit("/", 1)[-1]
    for key in (short, short.split("=", 1)[0], short.split("@", 1)[0]):
        if key in HIGHER_IS_BETTER:
            return HIGHER_IS_BETTER[key]
    return None


def directions(names: Iterable[str]) -> dict[str, bool]:
    """``{name: higher_is_better(name)}`` for result keys that are all in the map."""
    result = {}
    for name in names:
        better = higher_is_better(name)
        if better is None:
            raise KeyError(f"metric {name!r} has no direction in HIGHER_IS_BETTER")
        result[name] = better
    return result
