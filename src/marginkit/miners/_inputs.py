"""Input checks and the distance matrix shared by the miners and the pair/triplet losses."""

from __future__ import annotations

import torch
from torch import Tensor

from marginkit._validation import check_labels

# Squared distances at or below this are treated as 0 (their square root's gradient is 0 there).
_SQUARED_DISTANCE_FLOOR = 1e-12


def check_features_and_labels(features: object, labels: object) -> Tensor:
    """Check a (B, D) floating, finite ``features`` batch and its (B,) integer ``labels``.

    Returns the labels as a 1-D int64 tensor. One device-to-host read (the finiteness check):
    nothing trains on with NaN or infinite embeddings.
    """
    if not isinstance(features, Tensor):
        raise TypeError(f"`features` must be a torch.Tensor, got {type(features).__name__}")
    if features.ndim != 2:
        raise ValueError(f"`features` must have shape (B, D), got {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"`features` must be floating point, got {features.dtype}")
    labels = check_labels(labels, features.shape[0])
    if labels.device != features.device:
        raise ValueError(
            f"`labels` must be on the device of `features` ({features.device}), got {labels.device}"
        )
    check_finite_tensor("features", features)
    return labels


def check_finite_tensor(name: str, tensor: Tensor) -> None:
    """Raise ``ValueError`` naming ``name`` and the first bad row if ``tensor`` has NaN or inf."""
    finite = torch.isfinite(tensor.detach())
    if bool(finite.all()):
        return
    row = int((~finite).reshape(len(tensor), -1).any(1).nonzero()[0, 0]) if tensor.ndim else 0
    raise ValueError(f"`{name}` must be finite, got NaN or inf at row {row}")


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
