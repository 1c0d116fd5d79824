"""The margin/fallback combinations every public entry point refuses."""

from __future__ import annotations

import pytest


def refused_fallback(m1: float, margin_fallback: str) -> bool:
    """Whether ``margin_fallback="arcface"`` with this ``m1`` is refused.

    insightface's continuation ``cos θ − m2·sin(m2) − m3`` is only monotonic for ``m1 = 1``.
    """
    return margin_fallback == "arcface" and m1 != 1.0


def expect_refused():
    """The error every entry point raises for :func:`refused_fallback` combinations."""
    return pytest.raises(ValueError, match="margin_fallback='arcface'")
