"""Small pieces shared by the regularisers and the Euclidean / pairwise heads."""

from __future__ import annotations

from torch import Tensor

from marginkit._validation import check_finite_number


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


def reduce_loss(values: Tensor, reduction: str) -> Tensor:
    """Reduce per-row losses: ``"mean"``, ``"sum"`` or ``"none"`` (returned as is).

    Example:
        >>> import torch
        >>> reduce_loss(torch.tensor([1.0, 3.0]), "mean").item()
        2.0
    """
    if reduction == "none":
        return values
    return values.sum() if reduction == "sum" else values.mean()
