"""Input checks shared by the loss heads (run once, at the public boundary)."""

from __future__ import annotations

import torch
from torch import Tensor


def check_positive_int(name: str, value: int) -> int:
    """Return ``value`` if it is a positive ``int``, else raise ``TypeError``/``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"`{name}` must be positive, got {value}")
    return value


def check_embeddings(embeddings: Tensor, in_features: int) -> None:
    """Raise ``ValueError`` unless ``embeddings`` is a floating (N, in_features) tensor."""
    if not isinstance(embeddings, Tensor):
        raise TypeError(f"`embeddings` must be a torch.Tensor, got {type(embeddings).__name__}")
    if embeddings.ndim != 2 or embeddings.shape[1] != in_features:
        raise ValueError(
            f"`embeddings` must have shape (N, {in_features}), got {tuple(embeddings.shape)}"
        )
    if not embeddings.is_floating_point():
        raise ValueError(f"`embeddings` must be floating point, got {embeddings.dtype}")


def check_labels(labels: Tensor, batch_size: int) -> Tensor:
    """Return ``labels`` as a 1-D int64 tensor after checking its batch size and dtype.

    Metadata only (no device work); the range check is the op's
    :func:`~marginkit.ops._validation.check_label_range`.
    """
    if not isinstance(labels, Tensor):
        raise TypeError(f"`labels` must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"`labels` must be an integer tensor, got {labels.dtype}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] != batch_size:
        raise ValueError(
            f"`labels` must have shape ({batch_size},) to match the embeddings, "
            f"got {tuple(labels.shape)}"
        )
    return labels.long()
