"""What ``train.py`` runs: build everything from the config, fit, test, write ``metrics.json``.

Torch, Lightning and torchmetrics are imported inside the functions, when training starts, so
that importing this module (and ``python train.py --help``) stays fast.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from marginkit.cli.checkpoint import LAST_CHECKPOINT, resume_checkpoint, resumed_config
from marginkit.cli.config import (
    ConfigError,
    check_missing,
    first_line,
    instantiate_collection,
    instantiate_node,
)
from marginkit.cli.console import single_lightning_log
from marginkit.cli.options import BASELINE_PREFIX, write_metrics
from marginkit.cli.parallel import SHARDED_HEAD, loss_config, parallel_mode
from marginkit.cli.preflight import (
    check_backbone_takes_data,
    check_loss,
    check_optimization,
    check_trainer_limits,
)
from marginkit.cli.results import RunFacts, negative_pair_count, print_metrics

if TYPE_CHECKING:  # pragma: no cover
    import lightning as L

log = logging.getLogger(__name__)


def _loss_class(cfg: DictConfig) -> type | None:
    import hydra

    target = cfg.loss.get("_target_") if cfg.get("loss") else None
    if not target:
        return None
    try:
        return hydra.utils.get_class(target)
    except Exception as error:
        raise ConfigError(f"`loss` ({target}): {first_line(error)}") from error


def needs_balanced_batches(cfg: DictConfig) -> bool:
    """Whether the loss needs P×K batches and the user left ``data.n_instances`` unset.

    A loss class with ``requires_balanced_batches = True`` (pair and triplet losses with
    miners) needs them; the data config must then have an ``n_instances`` argument.
    """
    loss_class = _loss_class(cfg)
    if loss_class is None or not getattr(loss_class, "requires_balanced_batches", False):
        return False
    if "n_instances" not in cfg.data:
        raise ConfigError(
            f"`loss` ({cfg.loss._target_}) needs P×K batches but `data` "
            f"({cfg.data.get('_target_', '?')}) has no `n_instances` argument"
        )
    return cfg.data.n_instances is None


def balanced_n_instances(cfg: DictConfig, num_classes: int) -> int:
    """K of P×K batches of ``data.batch_size`` items.

    ``balanced_batches.n_instances`` (at least the loss's ``min_instances_per_class``), raised
    until P = batch_size / K fits the ``num_classes`` training classes and K divides the batch.

    Example:
        >>> from omegaconf import OmegaConf
        >>> cfg = OmegaConf.create(
        ...     {"data": {"batch_size": 64}, "balanced_batches": {"n_instances": 4}})
        >>> balanced_n_instances(cfg, 1000), balanced_n_instances(cfg, 6)
        (4, 16)
    """
    batch_size = int(cfg.data.get("batch_size", 0) or 0)
    wanted = int(cfg.get("balanced_batches", {}).get("n_instances", 4))
    loss_class = _loss_class(cfg) if cfg.get("loss") else None
    minimum = int(getattr(loss_class, "min_instances_per_class", 2) or 2)
    k = max(wanted, minimum)
    if batch_size <= 0:
        return k
    k = max(k, -(-batch_size // max(1, num_classes)))
    while batch_size % k:
        k += 1
    return k


def _setup_data(cfg: DictConfig, **overrides: Any) -> Any:
    datamodule = instantiate_node(cfg, "data", **overrides)
    try:
        datamodule.setup("fit")
    except (ValueError, TypeError, FileNotFoundError) as error:
        target = cfg.data.get("_target_", "?")
        raise ConfigError(f"`data` ({target}): {first_line(error)}") from error
    return datamodule


def build_module(cfg: DictConfig, loss: dict[str, Any] | None = None) -> L.LightningModule:
    """The model from ``cfg.model`` with the ``backbone``/``loss``/``optimizer``/``scheduler``
    configs, which it builds and stores in its checkpoints (so a checkpoint rebuilds alone).

    ``loss``: the loss config to use instead of ``cfg.loss`` (see
    :func:`marginkit.cli.parallel.loss_config`).
    """
    import hydra

    from marginkit.models.components import ComponentError, as_plain_config

    target = cfg.model.get("_target_", "?")
    try:
        module_class = hydra.utils.get_class(target)
    except Exception as error:
        raise ConfigError(f"`model` ({target}): {first_line(error)}") from error
    kwargs = {k: v for k, v in as_plain_config(cfg.model).items() if k != "_target_"}
    for part in ("backbone", "loss", "optimizer", "scheduler"):
        node = cfg.get(part)
        kwargs[part] = as_plain_config(node) if node else None
    if loss is not None:
        kwargs["loss"] = loss
    try:
        return module_class(**kwargs)
    except ComponentError as error:
        raise ConfigError(str(error)) from error
    except Exception as error:
        raise ConfigError(f"`model` ({target}): {first_line(error)}") from error


def build(
    cfg: DictConfig, probe: Any = None
) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Instantiate the datamodule, the module (backbone + loss head) and the trainer.

    The datamodule is set up (``setup("fit")``) first: ``loss.num_classes`` may be left as
    ``???`` and is filled in from the datamodule's ``num_classes`` (in the module's loss config;
    ``cfg`` itself is not changed). ``probe``: :func:`check_loss`'s head, if already built.
    Every mistake raises :class:`ConfigError` before any training starts.
    """
    check_missing(cfg, allowed_missing={"loss.num_classes"})
    if probe is None:
        probe = check_loss(cfg)
    balanced = needs_balanced_batches(cfg)
    n_instances = None
    datamodule = _setup_data(cfg)
    if balanced:  # K depends on the number of training classes, known after setup
        n_instances = balanced_n_instances(cfg, datamodule.num_classes)
        log.info("P×K batches for %s: K=%d", cfg.loss._target_, n_instances)
        datamodule = _setup_data(cfg, n_instances=n_instances)
    loss = loss_config(cfg, getattr(datamodule, "num_classes", None), probe)
    # --- verification targets (insightface's .bin sets): monitor them, evaluate them first.
    from marginkit.cli.targets import has_targets, target_callbacks, target_monitor

    if has_targets(datamodule):
        target_monitor(cfg, datamodule)
    # ---
    module = build_module(cfg, loss=loss)
    # Evaluation of the checkpoints uses the same data settings (image size, normalisation...).
    module.data_config = {
        **OmegaConf.to_container(cfg.data, resolve=True),
        **({"n_instances": n_instances} if balanced else {}),
    }
    callbacks = target_callbacks(datamodule) + instantiate_collection(cfg, "callbacks")
    loggers = instantiate_collection(cfg, "logger")
    if not loggers:  # a learning-rate monitor needs a logger to write to
        callbacks = [c for c in callbacks if type(c).__name__ != "LearningRateMonitor"]
    trainer = instantiate_node(cfg, "trainer", callbacks=callbacks, logger=loggers or False)
    return datamodule, module, trainer


def _baseline(cfg: DictConfig, datamodule: Any, module: Any) -> dict[str, float]:
    """The raw inputs' test metrics as ``baseline/<name>`` (``eval.baseline``)."""
    if not cfg.get("eval", {}).get("baseline", False) or "test" not in module.evaluated:
        return {}
    from marginkit.models.evaluation import baseline_metrics

    items = module.evaluated["test"]
    results = baseline_metrics(
        datamodule, "test", items.labels, items.indices, module.top_k, module.far_targets
    )
    if results is None:
        log.info("eval.baseline: the datamodule gives no raw features; no baseline")
        return {}
    return {f"{BASELINE_PREFIX}{name}": value for name, value in results.items()}


def _wanted_model(cfg: DictConfig) -> dict[str, Any]:
    """The backbone and loss configs a checkpoint must have to resume this command's model."""
    mode, _ = parallel_mode(cfg)
    wanted = {"backbone": OmegaConf.to_container(cfg.backbone, resolve=True)}
    if cfg.get("loss"):
        loss = OmegaConf.to_container(cfg.loss, resolve=True)
        wanted["loss"] = {"_target_": SHARDED_HEAD} if mode == "model" else loss
    return wanted


def _resumed(cfg: DictConfig, ckpt_path: Any) -> DictConfig:
    """The run's stored config with the command line on top; recorded in Hydra's output dir."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return cfg
    hydra_cfg = HydraConfig.get()
    resumed = resumed_config(cfg, ckpt_path, list(hydra_cfg.overrides.task))
    if hydra_cfg.output_subdir:
        record = Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir / "config.yaml"
        record.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(resumed, record)
    log.info("resuming %s with its stored config and the command line on top", ckpt_path)
    return resumed


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit on the training split, test the best checkpoint, write ``metrics.json``.

    Returns:
        A flat dict: the test metrics (``test/<name>``), the validation metrics of the best
        epoch by ``model.monitor`` (``val/<name>``) and, with ``eval.baseline``, the raw inputs'
        test metrics (``baseline/<name>``). Rank 0 writes it as JSON to
        ``<paths.output_dir>/metrics.json``.
    """
    # What needs no torch first: these mistakes answer before the training stack loads.
    check_missing(cfg, allowed_missing={"loss.num_classes"})
    if cfg.get("resume") and not cfg.get("ckpt_path"):
        ckpt_path = resume_checkpoint(cfg, wanted=_wanted_model(cfg))
        cfg = _resumed(cfg, ckpt_path)
    else:
        ckpt_path = resume_checkpoint(cfg)
    check_trainer_limits(cfg)
    # A bad loss argument answers once torch is imported, before Lightning and the data load.
    probe = check_loss(cfg)
    check_optimization(cfg)
    import lightning as L
    import torch

    single_lightning_log()
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    L.seed_everything(cfg.get("seed", 0), workers=True, verbose=False)
    datamodule, module, trainer = build(cfg, probe)
    check_backbone_takes_data(cfg, module, datamodule)
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    started = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except ValueError as error:  # a datamodule's check of its keys, raised when a loader is built
        if str(error).startswith("`"):
            raise ConfigError(first_line(error)) from error
        raise
    fit_seconds = time.perf_counter() - started
    if trainer.interrupted:
        raise KeyboardInterrupt
    metrics: dict[str, float] = dict(module.best_val_metrics)
    if cfg.get("test", True):
        checkpoint = getattr(trainer, "checkpoint_callback", None)
        best_path = getattr(checkpoint, "best_model_path", "") if checkpoint else ""
        trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None, verbose=False)
        metrics.update(module.test_metrics)
        if trainer.is_global_zero:
            metrics.update(_baseline(cfg, datamodule, module))
    if trainer.is_global_zero:
        path = write_metrics(cfg, metrics)
        print_metrics(
            metrics,
            title=f"{cfg.loss._target_.rsplit('.', 1)[-1]}: fit in {fit_seconds:.1f} s",
            facts=_run_facts(cfg, datamodule, module, trainer),
        )
        log.info("metrics written to %s", path)
    return metrics


def _run_facts(cfg: DictConfig, datamodule: Any, module: Any, trainer: Any) -> RunFacts:
    """The monitored metric, the best epoch, the pair counts and the checkpoint files."""
    negatives = {}
    pairs_of = getattr(datamodule, "verification_pairs", None)
    for stage in ("val", "test"):
        pairs = pairs_of(stage) if callable(pairs_of) and module.verification is not False else None
        if pairs is not None:
            negatives[stage] = negative_pair_count(pairs)
    checkpoints = []
    best = getattr(getattr(trainer, "checkpoint_callback", None), "best_model_path", "")
    if best:
        checkpoints.append(("best checkpoint", best))
    last = Path(cfg.paths.output_dir) / LAST_CHECKPOINT
    if last.is_file():
        checkpoints.append(("last checkpoint", str(last)))
    return RunFacts(module.monitor, module.best_val_epoch, negatives, checkpoints)


ERROR_FILE = "error.txt"


def _failed(cfg: DictConfig, message: str, code: int) -> float:
    """Report a failed run in one line; in a sweep, record it and let the other jobs run."""
    print(message, file=sys.stderr)
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        output_dir = Path(cfg.paths.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / ERROR_FILE).write_text(message + "\n")
    except Exception:  # no run directory to write to: the line above is the report
        pass
    if multirun:  # the sweep summary marks this job failed (NaN: a failed Optuna trial)
        return math.nan
    raise SystemExit(code)


def run(cfg: DictConfig) -> float | None:
    """Entry point for ``train.py``: train; a mistake or a stop is one line and an exit code.

    A config mistake exits 2, a training stop (a non-finite loss) exits 1. In a sweep
    (``-m``) a failed job writes ``error.txt`` in its directory instead and the sweep goes on
    (its ``summary.csv`` marks the job failed).

    Returns the monitored validation metric (what a Hydra sweeper optimises), or ``None``.
    """
    # Lightning 2.6 trips over its own pytree deprecation on every step; it is not actionable.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # Evaluation metrics are computed once over every rank's items and are identical on all
    # ranks: the DDP hint to sync them at logging is moot.
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
    try:
        metrics = train(cfg)
    except ConfigError as error:
        return _failed(cfg, f"config error: {error}", code=2)
    except FloatingPointError as error:  # the non-finite loss stop
        return _failed(cfg, f"training stopped: {first_line(error)}", code=1)
    except Exception as error:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
            raise
        return _failed(cfg, f"failed: {type(error).__name__}: {first_line(error)}", code=1)
    value = metrics.get(cfg.model.get("monitor", ""))
    return None if value is None or not math.isfinite(value) else value
