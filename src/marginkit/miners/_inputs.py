"""The distance matrix and pair masks shared by the miners and the pair/triplet losses.

Their input checks live in :mod:`marginkit._validation` (re-imported here for the losses that
import them from this module).
"""

from __future__ import annotations

import torch
from torch import Tensor

from marginkit._validation import check_features_and_labels, check_finite_rows

# The old name of check_finite_rows, still imported by the pair losses.
check_finite_tensor = check_finite_rows

__all__ = [
    "check_features_and_labels",
    "check_finite_tensor",
    "compute_dtype",
    "pair_masks",
    "pairwise_distances",
    "safe_sqrt",
]

# Squared distances at or below this are treated as 0 (their square root's gradient is 0 there).
_SQUARED_DISTANCE_FLOOR = 1e-12


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs (distances are sums of D squares), else ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def pairwise_distances(features: Tensor, squared: bool = False) -> Tensor:
    r"""The (B, B) Euclidean distance matrix :math:`\lVert x_i - x_j \rVert` (squared if asked).

    Computed as :math:`\lVert x_i\rVert^2 + \lVert x_j\rVert^2 - 2 x_i\cdot x_j`, clamped at 0, with
    an exact 0 on the diagonal. The square root is taken only of values above 1e-12; smaller
    ones give distance 0 with gradient 0 (the subgradient of a distance between coinciding
    points), so repeated items in a batch never produce NaN gradients.

    Example:
        >>> pairwise_distances(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
        tensor([[0., 5.],
                [5., 0.]])
    """
    features = features.to(compute_dtype(features.dtype))
    sq_norm = features.square().sum(1)
    sq = torch.addmm(sq_norm.unsqueeze(0), features, features.T, alpha=-2.0)
    sq = (sq + sq_norm.unsqueeze(1)).clamp_min(0.0)
    eye = torch.eye(len(features), dtype=torch.bool, device=features.device)
    sq = sq.masked_fill(eye, 0.0)
    if squared:
        return sq
    return safe_sqrt(sq)


def safe_sqrt(sq: Tensor) -> Tensor:
    """``sqrt(sq)`` with value and gradient 0 where ``sq <= 1e-12`` (no inf/NaN gradients)."""
    above = sq > _SQUARED_DISTANCE_FLOOR
    return torch.where(above, sq.clamp_min(_SQUARED_DISTANCE_FLOOR).sqrt(), 0.0)


def pair_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(positive, negative)`` (B, B) masks: same label and not the same item; other label."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same
