"""Checks of the data modules' settings (stages, counts, fractions)."""

from __future__ import annotations

EVAL_STAGES = ("val", "test")


def check_stage(stage: object, allowed: tuple[str, ...] = EVAL_STAGES) -> str:
    """Return ``stage`` if it is one of ``allowed``, else raise ``ValueError`` naming them."""
    if stage not in allowed:
        raise ValueError(f"`stage` must be one of {allowed}, got {stage!r}")
    return stage  # type: ignore[return-value]


def check_int_at_least(name: str, value: object, low: int) -> int:
    """Return ``value`` if it is an int ``>= low``: ``TypeError`` for a non-int, else ``ValueError``.

    Example:
        >>> check_int_at_least("n_instances", 2, 2)
        2
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
    if value < low:
        wanted = "positive" if low == 1 else f">= {low}"
        raise ValueError(f"`{name}` must be {wanted}, got {value}")
    return value


def check_fraction(name: str, value: float) -> float:
    """Return ``value`` as a float if it is in the open interval (0, 1), else raise ``ValueError``."""
    if not 0.0 < value < 1.0:
        raise ValueError(f"`{name}` must be in (0, 1), got {value}")
    return float(value)
