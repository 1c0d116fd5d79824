"""What ``embed.py`` runs: ``torch.save`` the embeddings of one split of the data.

The file: ``{"embeddings": (N, D) float32, "labels": (N,) int64, "paths": list[str] | None,
"indices": (N,) int64, "class_names": list[str] | None}``, rows in dataset order.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from marginkit.cli.config import exit_on_config_error
from marginkit.cli.embedding import class_names, embed_from_config
from marginkit.cli.options import output_path

EMBEDDINGS_FILE = "embeddings.pt"


def embed(cfg: DictConfig) -> Path:
    """Embed ``cfg.split`` with ``cfg.ckpt_path`` and ``torch.save`` the dict to ``cfg.out``.

    The dict: ``embeddings`` (N, D) float32, ``labels`` (N,) int64, ``paths`` (the items' files,
    or None for in-memory data), ``indices`` (N,) int64 (the items' positions in the split, rows
    sorted by them; unreadable images are missing) and ``class_names`` (the name of each label,
    e.g. the identity folders, or None). It loads with ``torch.load(path, weights_only=True)``.

    Returns:
        The path written: ``cfg.out``, or ``<paths.output_dir>/embeddings.pt`` when it is null.
    """
    out = output_path(cfg, EMBEDDINGS_FILE)
    _, datamodule, result = embed_from_config(cfg)
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**result.as_dict(), "class_names": class_names(datamodule, cfg.split)}, out)
    n, dim = result.embeddings.shape
    print(f"{n} embeddings of dimension {dim} ({cfg.split} split) written to {out}")
    return out


def run(cfg: DictConfig) -> str:
    """Entry point of ``embed.py``: embed, or one line + exit 2 for a config mistake."""
    return str(exit_on_config_error(embed, cfg))
