"""marginkit: margin-based metric-learning losses, fused ops, metrics and a Hydra CLI.

``import marginkit`` is light (torch only); :class:`EmbeddingModule` (which needs Lightning) and
the subpackages load on first use.

Example:
    >>> import torch, marginkit
    >>> head = marginkit.losses.ArcFaceLoss(in_features=8, num_classes=4, s=16.0)
    >>> float(head(torch.randn(2, 8), torch.tensor([0, 3])).detach()) > 0
    True
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = [
    "EmbeddingModule",
    "__version__",
    "data",
    "distributed",
    "losses",
    "metrics",
    "miners",
    "models",
    "ops",
]

_SUBMODULES = ("cli", "data", "distributed", "losses", "metrics", "miners", "models", "ops")


def __getattr__(name: str) -> Any:
    if name == "EmbeddingModule":
        from marginkit.models.embedding_module import EmbeddingModule

        return EmbeddingModule
    if name in _SUBMODULES:
        return importlib.import_module(f"marginkit.{name}")
    raise AttributeError(f"module 'marginkit' has no attribute {name!r}")
