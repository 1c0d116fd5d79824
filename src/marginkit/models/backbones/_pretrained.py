"""Loading a backbone's weights from a local file (never downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn


def load_pretrained(module: nn.Module, path: str | os.PathLike, prefix: str = "backbone.") -> None:
    """Load ``module``'s weights from the file at ``path`` with ``torch.load(weights_only=True)``.

    The file holds a state dict (``torch.save(model.state_dict(), path)``, e.g. insightface's
    released ``backbone.pth``), or a dict with a ``"state_dict"`` entry (a Lightning checkpoint
    that loads with ``weights_only=True``), whose keys starting with ``prefix`` are taken with
    the prefix removed (the backbone of an :class:`~marginkit.EmbeddingModule`). Loading is
    strict: a missing or unexpected key, or a shape that differs, raises ``ValueError`` naming
    the file.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file's weights do not fit ``module``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`pretrained` weights file {str(path)!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
        if any(key.startswith(prefix) for key in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not isinstance(state, dict):
        raise ValueError(f"`pretrained` file {str(path)!r} does not hold a state dict")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"`pretrained` file {str(path)!r} does not fit {type(module).__name__}: {error}"
        ) from None
