"""Finding and loading checkpoints, the same way for every command.

``ckpt_path=`` names a ``.ckpt`` file or a train run directory (relative paths start at the
launch directory); a directory stands for its ``checkpoints/best.ckpt`` or
``checkpoints/last.ckpt``: evaluating commands prefer the best, a resumed training run the last.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from marginkit.cli.config import ConfigError, first_line

if TYPE_CHECKING:  # pragma: no cover
    import lightning as L
    from torch import nn

log = logging.getLogger(__name__)

BEST_CHECKPOINT = "checkpoints/best.ckpt"
LAST_CHECKPOINT = "checkpoints/last.ckpt"
# Where a train run directory keeps its checkpoints, in the order each use prefers them.
FOR_EVALUATION = (BEST_CHECKPOINT, LAST_CHECKPOINT)
FOR_RESUMING = (LAST_CHECKPOINT,)


def resolve_checkpoint(ckpt_path: object, prefer: tuple[str, ...] = FOR_EVALUATION) -> Path:
    """The checkpoint file ``ckpt_path`` names: a file, or a train run directory.

    A directory stands for the first of ``prefer`` it holds (``checkpoints/best.ckpt``, else
    ``checkpoints/last.ckpt`` by default), so ``ckpt_path=outputs/train/<run>`` works.

    Raises:
        ConfigError: not a path, no such file, or a directory without those checkpoints.
    """
    import hydra

    if not isinstance(ckpt_path, str) or not ckpt_path.strip():
        raise ConfigError(f"`ckpt_path` must be the path of a checkpoint, got {ckpt_path!r}")
    path = Path(hydra.utils.to_absolute_path(ckpt_path))
    if path.is_dir():
        for candidate in prefer:
            if (path / candidate).is_file():
                return path / candidate
        raise ConfigError(f"`ckpt_path` {ckpt_path!r} is a directory without {' or '.join(prefer)}")
    if not path.is_file():
        raise ConfigError(f"`ckpt_path` {ckpt_path!r}: no such file")
    return path


def load_module(cfg: DictConfig) -> L.LightningModule:
    """Rebuild ``cfg.ckpt_path``'s :class:`~marginkit.EmbeddingModule` on the CPU, in eval mode.

    Loaded with ``weights_only=True``: a checkpoint that needs arbitrary unpickling is refused.
    """
    path = resolve_checkpoint(cfg.get("ckpt_path"))
    from marginkit.models.embedding_module import EmbeddingModule

    try:
        # weights_only: the checkpoint stores plain containers, nothing is unpickled as code.
        module = EmbeddingModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConfigError(
            f"`ckpt_path` {cfg.ckpt_path!r}: cannot rebuild the model from it "
            f"({type(error).__name__}: {first_line(error)})"
        ) from error
    log.info("loaded %s", path)
    return module.eval()


def head_num_classes(module: nn.Module) -> int | None:
    """The number of classes of the module's head, or None (a head without class weights)."""
    from torch import Tensor

    head = getattr(module, "loss", None)
    num_classes = getattr(head, "num_classes", None)
    if isinstance(num_classes, int):
        return num_classes
    weight = getattr(head, "weight", None)
    if isinstance(weight, Tensor) and weight.ndim == 2:
        return int(weight.shape[0])
    return None


def describe(module: nn.Module) -> str:
    """The module's one-line description (backbone and loss), or its class name."""
    describe_module = getattr(module, "describe", None)
    return describe_module() if callable(describe_module) else type(module).__name__


def resume_checkpoint(cfg: DictConfig) -> Path | None:
    """The checkpoint a training run starts from: ``ckpt_path``, or with ``resume=true`` a last.

    ``ckpt_path`` is read as by every command (:func:`resolve_checkpoint`, a run directory
    standing for its ``checkpoints/last.ckpt``). ``resume=true`` takes the run directory's own
    ``checkpoints/last.ckpt`` when it has one (a fixed ``run_name`` or ``hydra.run.dir``),
    otherwise the newest ``<paths.task_dir>/*/checkpoints/last.ckpt`` (the task's latest run).
    """
    if cfg.get("ckpt_path"):
        return resolve_checkpoint(cfg.ckpt_path, prefer=FOR_RESUMING)
    if not cfg.get("resume", False):
        return None
    own = Path(cfg.paths.output_dir) / LAST_CHECKPOINT
    if own.is_file():
        return own
    task_dir = Path(cfg.paths.get("task_dir", Path(cfg.paths.output_dir).parent))
    candidates = sorted(task_dir.glob(f"*/{LAST_CHECKPOINT}"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ConfigError(
            f"`resume` is true but there is no last.ckpt in {own.parent} nor in "
            f"{task_dir}/*/checkpoints (give `ckpt_path=<file>`)"
        )
    return candidates[-1]
