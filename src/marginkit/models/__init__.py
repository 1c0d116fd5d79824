"""LightningModules, backbones, schedules and evaluation.

Imported lazily: ``marginkit.models.metric_mode`` (used by the command line's config resolver)
does not load Lightning; ``EmbeddingModule`` does, on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module (relative to marginkit.models)
_EXPORTS: dict[str, str] = {
    "EmbeddingModule": "embedding_module",
    "cosine_with_warmup": "schedulers",
    "polynomial_with_warmup": "schedulers",
    "metric_mode": "metric_direction",
    "evaluate_embeddings": "evaluation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"marginkit.models.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'marginkit.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*__all__, "backbones"]
