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


def command_line_overrides(cfg: DictConfig) -> list[str] | None:
    """The command line's overrides (``cfg.hydra`` when composed with it, else the running
    Hydra app's), or None when the config was composed without a record of them."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    recorded = OmegaConf.select(cfg, "hydra.overrides.task", default=None)
    if recorded is not None:
        return [str(override) for override in recorded]
    if HydraConfig.initialized():
        return [str(override) for override in HydraConfig.get().overrides.task]
    return None


# Data settings that define what the model sees (not where the data is): taken from the
# checkpoint, unless given on the command line, also when evaluating on another data group.
TRANSFORM_KEYS = ("image_size", "crop_size", "mean", "std", "grayscale")


def with_checkpoint_data(cfg: DictConfig, module: nn.Module) -> DictConfig:
    """``cfg`` with the data settings the checkpoint was trained with as defaults.

    A checkpoint written by ``train.py`` holds its resolved ``data`` config. Without a ``data=``
    group on the command line, or with the checkpoint's own data class (``data=image_folder``
    for an image-folder run), that config is used, with the command line's ``data.<key>=``
    overrides on top (e.g. another ``data.root``). For another data class (``data=pairs`` to
    verify on LFW) the command line's data is used, with the checkpoint's transform settings
    (:data:`TRANSFORM_KEYS`: image size, crop, normalisation, grayscale) unless given. Returns a
    new config; ``cfg`` is not changed.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf, open_dict

    stored = getattr(module, "data_config", None)
    overrides = command_line_overrides(cfg)
    if not stored or overrides is None:
        return cfg
    parsed = OverridesParser.create().parse_overrides(overrides)
    chosen = any(override.key_or_group == "data" for override in parsed)
    explicit = {
        override.key_or_group[len("data.") :]: override
        for override in parsed
        if override.key_or_group.startswith("data.")
    }
    if not chosen or stored.get("_target_") == cfg.data.get("_target_"):
        data = OmegaConf.create(stored)
        for key, override in explicit.items():
            if override.is_delete():
                data.pop(key, None)
            else:
                OmegaConf.update(data, key, override.value(), force_add=True)
        log.info("data settings from the checkpoint (%s)", data.get("_target_", "?"))
    else:
        data = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
        taken = [k for k in TRANSFORM_KEYS if k in data and k in stored and k not in explicit]
        for key in taken:
            data[key] = stored[key]
        log.info("transform settings from the checkpoint: %s", ", ".join(taken) or "none")
    result = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(result):
        result.data = data
    return result
