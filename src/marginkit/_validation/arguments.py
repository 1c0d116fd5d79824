"""Checks of plain arguments: options, numbers, margins, flags (no tensor data)."""

from __future__ import annotations

import math
import numbers

from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")


IMPLS = (None, "torch", "triton")


def check_option(name: str, value: object, allowed: tuple) -> None:
    """Raise unless ``value`` is one of ``allowed``: ``TypeError`` for a non-string, else ``ValueError``.

    ``None`` is a value like the strings (allowed where ``allowed`` lists it).
    """
    if value is None or isinstance(value, str):
        if value not in allowed:
            raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}")
        return
    raise TypeError(f"`{name}` must be one of {allowed}, got {type(value).__name__} {value!r}")


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a ``bool``, else raise ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {type(value).__name__}")
    return value


def check_process_group(group: object) -> None:
    """Raise ``TypeError`` unless ``group`` is a ``torch.distributed`` process group or ``None``."""
    import torch.distributed as dist

    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(
            f"`group` must be a torch.distributed ProcessGroup or None, got {type(group).__name__}"
        )


def check_finite_number(name: str, value: object, *, positive: bool = False) -> float:
    """Return ``value`` as a float if it is a finite real number (``> 0`` with ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        wanted = "a finite number > 0" if positive else "a finite number"
        raise ValueError(f"`{name}` must be {wanted}, got {value}")
    return value


def check_margins(
    m1: object, m2: object, m3: object, names: tuple[str, str, str]
) -> tuple[float, float, float]:
    """Return the margins as floats: ``TypeError`` for a non-number, ``ValueError`` unless finite
    with the first one ``> 0``."""
    return (
        check_finite_number(names[0], m1, positive=True),
        check_finite_number(names[1], m2),
        check_finite_number(names[2], m3),
    )


def check_ignore_index(ignore_index: object) -> None:
    """Raise ``TypeError`` unless ``ignore_index`` is an ``int``."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"`ignore_index` must be an int, got {type(ignore_index).__name__}")


def check_positive_int(name: str, value: int) -> int:
    """Return ``value`` if it is a positive ``int``, else raise ``TypeError``/``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"`{name}` must be positive, got {value}")
    return value


def check_nonnegative(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite real number ``>= 0``.

    Raises:
        TypeError: ``value`` is not a real number.
        ValueError: ``value`` is negative, infinite or NaN.

    Example:
        >>> check_nonnegative("lamda", 0.5)
        0.5
    """
    value = check_finite_number(name, value)
    if value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value}")
    return value


def check_scale(s: object) -> float:
    """Return the logit scale ``s`` as a float; ``ValueError`` unless finite and ``> 0``.

    Example:
        >>> check_scale(64)
        64.0
    """
    return check_finite_number("s", s, positive=True)


def check_margin(
    name: str, value: object, upper: float | None = None, *, lower: float = 0.0
) -> float:
    """Return ``value`` as a float if ``lower <= value (< upper)``, else raise ``ValueError``.

    Example:
        >>> check_margin("m", 0.5, upper=3.14)
        0.5
    """
    value = check_finite_number(name, value)
    if value < lower or (upper is not None and value >= upper):
        allowed = f"[{lower:g}, {upper:g})" if upper is not None else f">= {lower:g}"
        raise ValueError(f"`{name}` must be in {allowed}, got {value}")
    return value


def check_memory_efficient(value: object) -> bool | str:
    """Return ``value`` if it is ``True``, ``False`` or ``"auto"``, else raise ``ValueError``."""
    if not (isinstance(value, bool) or value == "auto"):
        raise ValueError(f"`memory_efficient` must be True, False or 'auto', got {value!r}")
    return value


def check_arcface_fallback(margin_fallback: str, m1: object, name: str = "m1") -> None:
    r"""Raise ``ValueError`` for ``margin_fallback="arcface"`` with ``m1`` other than the float 1.

    insightface's continuation :math:`\cos\theta - m_2\sin m_2 - m_3` past
    :math:`m_1\theta + m_2 = \pi` is made for :math:`m_1 = 1`; with :math:`m_1 \ne 1` the target
    logit jumps up at :math:`\theta^* = (\pi - m_2)/m_1` (for ``(2, 0.3, 0)``: −1.0 just before,
    +0.06 just after), so the loss would fall as a sample leaves its class.
    ``margin_fallback="monotonic"`` is continuous and decreasing for every ``m1``.

    Example:
        >>> check_arcface_fallback("arcface", 1.0)
        >>> check_arcface_fallback("monotonic", 2.0)
    """
    if margin_fallback != "arcface":
        return
    if isinstance(m1, bool) or not isinstance(m1, numbers.Real) or float(m1) != 1.0:
        shown = f"a {type(m1).__name__}" if isinstance(m1, Tensor) else repr(m1)
        raise ValueError(
            f"`margin_fallback='arcface'` needs `{name}` = 1 (its continuation cos θ − m2·sin(m2) "
            "− m3 makes the target logit jump up at θ = (π − m2)/m1 otherwise); use "
            f"margin_fallback='monotonic' for {name} != 1, got {name}={shown}"
        )
