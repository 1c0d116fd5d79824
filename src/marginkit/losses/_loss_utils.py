"""The reduction every loss uses (``reduce_loss``); ``check_nonnegative`` lives in ``_validation``."""

from __future__ import annotations

from torch import Tensor

# Re-imported for the pair losses that import it from here.
from marginkit._validation import check_nonnegative

__all__ = ["check_nonnegative", "reduce_loss"]


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
