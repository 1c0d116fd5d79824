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


def named_run(cfg: DictConfig) -> str | None:
    """The run's name when the command line fixed its directory (``run_name=`` or
    ``hydra.run.dir=``), else None (a fresh, timestamped run directory).

    Example:
        >>> from omegaconf import OmegaConf
        >>> named_run(OmegaConf.create({"run_name": "exp1"}))
        'exp1'
        >>> print(named_run(OmegaConf.create({"run_name": "${now:%Y-%m-%d_%H-%M-%S}"})))
        None
    """
    from omegaconf import OmegaConf

    run_name = OmegaConf.to_container(cfg, resolve=False).get("run_name")
    if isinstance(run_name, str) and not run_name.startswith("${now:"):
        return run_name
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        for override in HydraConfig.get().overrides.hydra:
            if str(override).startswith("hydra.run.dir="):
                return str(override).split("=", 1)[1]
    return None


def checkpoint_model(path: Path) -> dict | None:
    """The model configs a checkpoint was saved with (its hyper-parameters), or None."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # a file being written, or not a checkpoint
        log.info("resume: cannot read %s (%s)", path, first_line(error))
        return None
    hparams = checkpoint.get("hyper_parameters")
    return hparams if isinstance(hparams, dict) else None


def _model_fits(hparams: dict | None, wanted: dict) -> bool:
    """Whether a checkpoint's model (backbone and loss configs) is the model ``wanted``."""
    if hparams is None:
        return False
    for part, config in wanted.items():
        stored = hparams.get(part)
        if not isinstance(stored, dict) or stored.get("_target_") != config.get("_target_"):
            return False
        for key, value in config.items():
            if value != "???" and key in stored and stored[key] != value:
                return False
    return True


def resume_checkpoint(cfg: DictConfig, wanted: dict | None = None) -> Path | None:
    """The checkpoint a training run starts from: ``ckpt_path``, or with ``resume=true`` a last.

    ``ckpt_path`` is read as by every command (:func:`resolve_checkpoint`, a run directory
    standing for its ``checkpoints/last.ckpt``). ``resume=true`` continues the run directory's
    own ``checkpoints/last.ckpt``. A named run (``run_name=`` or ``hydra.run.dir=``) resumes
    only itself; without a name, the newest ``<paths.task_dir>/*/checkpoints/last.ckpt`` whose
    model is ``wanted`` (``{"backbone": config, "loss": config}``; None: any) is taken.

    Raises:
        ConfigError: nothing to resume, in one line naming the run.
    """
    if cfg.get("ckpt_path"):
        return resolve_checkpoint(cfg.ckpt_path, prefer=FOR_RESUMING)
    if not cfg.get("resume", False):
        return None
    own = Path(cfg.paths.output_dir) / LAST_CHECKPOINT
    if own.is_file():
        return own
    name = named_run(cfg)
    if name is not None:
        raise ConfigError(
            f"`resume` is true but run {name!r} has no {LAST_CHECKPOINT} ({own}); drop "
            "resume=true to start it, or give ckpt_path=<file>"
        )
    task_dir = Path(cfg.paths.get("task_dir", Path(cfg.paths.output_dir).parent))
    candidates = sorted(task_dir.glob(f"*/{LAST_CHECKPOINT}"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ConfigError(
            f"`resume` is true but there is no last.ckpt in {own.parent} nor in "
            f"{task_dir}/*/checkpoints (give `ckpt_path=<file>`)"
        )
    for candidate in reversed(candidates):
        if wanted is None or _model_fits(checkpoint_model(candidate), wanted):
            return candidate
    raise ConfigError(
        f"`resume` is true but none of the {len(candidates)} last.ckpt in {task_dir}/*/checkpoints "
        "holds this model (backbone and loss); give run_name=<run> or ckpt_path=<file>"
    )


# Keys of the command line that choose what to resume, not how the run is configured.
_RESUME_KEYS = ("resume", "run_name", "ckpt_path")
STORED_CONFIG = ".hydra/config.yaml"


def resumed_config(cfg: DictConfig, checkpoint: Path, overrides: list[str]) -> DictConfig:
    """The config a resumed run continues with: its run's stored config, ``overrides`` on top.

    The run directory of ``checkpoint`` (``<run>/checkpoints/last.ckpt``) keeps the config it
    was started with in ``.hydra/config.yaml``; the command line's ``key=value`` overrides (e.g.
    a larger ``trainer.max_epochs``) apply on top of it, as Hydra applies them (``+key``,
    ``++key``, ``~key``). A config group choice (``loss=cosface``) cannot change a resumed
    run. ``cfg`` itself is returned when the run has no stored config.

    Raises:
        ConfigError: an override that does not apply to the stored config.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf, open_dict

    stored_path = checkpoint.parent.parent / STORED_CONFIG
    if not stored_path.is_file():
        return cfg
    stored = OmegaConf.load(stored_path)
    hydra_record = stored_path.parent / "hydra.yaml"
    choices: dict = {}
    if hydra_record.is_file():
        recorded = OmegaConf.load(hydra_record)
        choices = OmegaConf.to_container(recorded.hydra.runtime.get("choices", {}))
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key in _RESUME_KEYS or key.startswith("hydra") or override.package:
            continue
        value = override.value()
        if key in choices or (
            key in stored and not isinstance(value, dict) and OmegaConf.is_dict(stored[key])
        ):
            if str(choices.get(key)) == str(value):  # the run's own choice, repeated
                continue
            raise ConfigError(
                f"`{override.input_line}`: a resumed run keeps its config groups (from "
                f"{stored_path}); start a new run to change `{key}`"
            )
        with open_dict(stored):
            if override.is_delete():
                *parents, leaf = key.split(".")
                parent = OmegaConf.select(stored, ".".join(parents)) if parents else stored
                if parent is not None:
                    parent.pop(leaf, None)
                continue
            if OmegaConf.select(stored, key, default="__absent__") == "__absent__" and not (
                override.is_add() or override.is_force_add()
            ):
                raise ConfigError(
                    f"`{override.input_line}`: `{key}` is not in the resumed run's config "
                    f"({stored_path})"
                )
            OmegaConf.update(stored, key, value, merge=True, force_add=True)
    with open_dict(stored):
        stored.resume = cfg.get("resume", False)
        stored.ckpt_path = cfg.get("ckpt_path")
        stored.paths.output_dir = cfg.paths.output_dir
    return stored
