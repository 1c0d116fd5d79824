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
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from marginkit.cli.checkpoint import resume_checkpoint
from marginkit.cli.config import (
    ConfigError,
    check_missing,
    first_line,
    instantiate_collection,
    instantiate_node,
)
from marginkit.cli.options import BASELINE_PREFIX, write_metrics
from marginkit.cli.results import print_metrics

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


def _setup_data(cfg: DictConfig) -> Any:
    datamodule = instantiate_node(cfg, "data")
    try:
        datamodule.setup("fit")
    except (ValueError, TypeError, FileNotFoundError) as error:
        target = cfg.data.get("_target_", "?")
        raise ConfigError(f"`data` ({target}): {first_line(error)}") from error
    return datamodule


def build_module(cfg: DictConfig) -> L.LightningModule:
    """The model from ``cfg.model`` with the ``backbone``/``loss``/``optimizer``/``scheduler``
    configs, which it builds and stores in its checkpoints (so a checkpoint rebuilds alone)."""
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
    try:
        return module_class(**kwargs)
    except ComponentError as error:
        raise ConfigError(str(error)) from error
    except Exception as error:
        raise ConfigError(f"`model` ({target}): {first_line(error)}") from error


def _preflight_loss(cfg: DictConfig) -> None:
    """Build the loss once with a stand-in class count, before the data and Lightning load.

    A bad loss argument (``loss.m=-0.5``) then fails in about the time torch takes to import,
    not after the training stack and the data are loaded.
    """
    if not cfg.get("loss") or ("parallel" in cfg.loss and cfg.loss.parallel == "model"):
        return
    probe = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    if "num_classes" in probe.loss.keys() and OmegaConf.is_missing(probe.loss, "num_classes"):
        probe.loss.num_classes = 2
    with open_dict(probe):
        for key in LOSS_PARALLEL_KEYS:
            probe.loss.pop(key, None)
    if OmegaConf.missing_keys(probe.loss):  # e.g. nested heads: build() fills them in
        return
    instantiate_node(probe, "loss")


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Instantiate the datamodule, the module (backbone + loss head) and the trainer.

    The datamodule is set up (``setup("fit")``) first: ``loss.num_classes`` may be left as
    ``???`` and is filled in (in ``cfg``) from the datamodule's ``num_classes``. Every mistake
    raises :class:`ConfigError` before any training starts.
    """
    check_missing(cfg, allowed_missing={"loss.num_classes"})
    balanced = needs_balanced_batches(cfg)
    datamodule = _setup_data(cfg)
    if balanced:  # K depends on the number of training classes, known after setup
        cfg.data.n_instances = balanced_n_instances(cfg, datamodule.num_classes)
        log.info("P×K batches for %s: K=%d", cfg.loss._target_, cfg.data.n_instances)
        datamodule = _setup_data(cfg)
    num_classes = getattr(datamodule, "num_classes", None)
    if "num_classes" in cfg.loss.keys():
        if OmegaConf.is_missing(cfg.loss, "num_classes"):
            if num_classes is None:
                raise ConfigError(
                    "`loss.num_classes` is ??? and the datamodule has no `num_classes`"
                )
            cfg.loss.num_classes = num_classes
        elif num_classes is not None and cfg.loss.num_classes != num_classes:
            raise ConfigError(
                f"`loss.num_classes` is {cfg.loss.num_classes} but the data has {num_classes} "
                "training classes (leave it as ??? to fill it in)"
            )
    apply_loss_parallel(cfg)
    module = build_module(cfg)
    callbacks = instantiate_collection(cfg, "callbacks")
    loggers = instantiate_collection(cfg, "logger")
    if not loggers:  # a learning-rate monitor needs a logger to write to
        callbacks = [c for c in callbacks if type(c).__name__ != "LearningRateMonitor"]
    trainer = instantiate_node(cfg, "trainer", callbacks=callbacks, logger=loggers or False)
    return datamodule, module, trainer


# Keys of the combined-margin loss configs read by the CLI, not by the head's constructor.
LOSS_PARALLEL_KEYS = ("parallel", "sample_rate")


def apply_loss_parallel(cfg: DictConfig) -> None:
    """``loss.parallel``: ``data`` (replicated head) or ``model`` (class-sharded head).

    ``model`` replaces the head config by the equivalent
    :class:`~marginkit.losses.ShardedMarginHead` (Partial FC with ``loss.sample_rate``); both
    keys are removed from ``cfg.loss`` so the head is built from its constructor's arguments.
    """
    if not cfg.get("loss") or "parallel" not in cfg.loss:
        return
    parallel = cfg.loss.parallel
    sample_rate = cfg.loss.get("sample_rate", 1.0)
    plain = OmegaConf.to_container(cfg.loss, resolve=True)
    for key in LOSS_PARALLEL_KEYS:
        plain.pop(key, None)
    if parallel == "model":
        from marginkit.losses.sharded import sharded_head_config

        try:
            plain = sharded_head_config(plain, sample_rate)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"`loss.parallel`: {first_line(error)}") from error
    elif parallel != "data":
        raise ConfigError(f"`loss.parallel` must be 'data' or 'model', got {parallel!r}")
    elif sample_rate != 1.0:
        raise ConfigError("`loss.sample_rate` < 1 (Partial FC) needs `loss.parallel=model`")
    with open_dict(cfg):
        cfg.loss = OmegaConf.create(plain)


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
    ckpt_path = resume_checkpoint(cfg)
    # A bad loss argument answers once torch is imported, before Lightning and the data load.
    _preflight_loss(cfg)
    import lightning as L
    import torch

    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    L.seed_everything(cfg.get("seed", 0), workers=True, verbose=False)
    datamodule, module, trainer = build(cfg)
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
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
            metrics, title=f"{cfg.loss._target_.rsplit('.', 1)[-1]}: fit in {fit_seconds:.1f} s"
        )
        log.info("metrics written to %s", path)
    return metrics


def run(cfg: DictConfig) -> float | None:
    """Entry point for ``train.py``: train, and turn config mistakes into one line + exit 2.

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
        print(f"config error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    value = metrics.get(cfg.model.get("monitor", ""))
    return None if value is None or not math.isfinite(value) else value
