"""What ``train.py`` runs: build everything from the config, fit, test, write ``metrics.json``."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from marginkit.cli.config import (
    ConfigError,
    check_missing,
    instantiate_collection,
    instantiate_node,
)

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Instantiate the datamodule, the module (backbone + loss head) and the trainer.

    ``loss.num_classes`` may be left as ``???``: it is filled in (in ``cfg``) from the
    datamodule's ``num_classes``. Every mistake raises :class:`ConfigError` before any training starts.
    """
    check_missing(cfg, allowed_missing={"loss.num_classes"})
    datamodule = instantiate_node(cfg, "data")
    backbone = instantiate_node(cfg, "backbone")
    num_classes = getattr(datamodule, "num_classes", None)
    if OmegaConf.is_missing(cfg.loss, "num_classes"):
        if num_classes is None:
            raise ConfigError("`loss.num_classes` is ??? and the datamodule has no `num_classes`")
        cfg.loss.num_classes = num_classes
    elif num_classes is not None and cfg.loss.get("num_classes", num_classes) != num_classes:
        raise ConfigError(
            f"`loss.num_classes` is {cfg.loss.num_classes} but the data has {num_classes} "
            "training classes (leave it as ??? to fill it in)"
        )
    loss = instantiate_node(cfg, "loss")
    optimizer = instantiate_node(cfg, "optimizer")
    scheduler = instantiate_node(cfg, "scheduler")
    module = instantiate_node(
        cfg, "model", backbone=backbone, loss=loss, optimizer=optimizer, scheduler=scheduler
    )
    callbacks = instantiate_collection(cfg, "callbacks")
    loggers = instantiate_collection(cfg, "logger")
    trainer = instantiate_node(cfg, "trainer", callbacks=callbacks, logger=loggers or False)
    return datamodule, module, trainer


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit on the training split, test the best checkpoint, write ``metrics.json``.

    Returns:
        A flat dict: the test metrics (``test/<name>``) and the validation metrics of the best
        epoch by ``model.monitor`` (``val/<name>``). The same dict is written as JSON to
        ``<paths.output_dir>/metrics.json``.
    """
    L.seed_everything(cfg.get("seed", 0), workers=True, verbose=False)
    datamodule, module, trainer = build(cfg)
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_seconds = time.perf_counter() - started
    if trainer.interrupted:
        raise KeyboardInterrupt
    metrics: dict[str, float] = dict(module.best_val_metrics)
    if cfg.get("test", True):
        checkpoint = getattr(trainer, "checkpoint_callback", None)
        best_path = getattr(checkpoint, "best_model_path", "") if checkpoint else ""
        trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None, verbose=False)
        metrics.update(module.test_metrics)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Strict JSON: an undefined metric (e.g. AUC with one kind of pair only) is written as null.
    finite = {key: value if math.isfinite(value) else None for key, value in metrics.items()}
    (output_dir / METRICS_FILE).write_text(json.dumps(finite, indent=2, sort_keys=True) + "\n")
    print_metrics(
        metrics, title=f"{cfg.loss._target_.rsplit('.', 1)[-1]}: fit in {fit_seconds:.1f} s"
    )
    log.info("metrics written to %s", output_dir / METRICS_FILE)
    return metrics


def print_metrics(metrics: dict[str, float], title: str = "metrics") -> None:
    """Print a small table: one row per metric name, a column per stage (val / test)."""
    from rich.console import Console
    from rich.table import Table

    names = sorted({key.split("/", 1)[1] for key in metrics})
    stages = [stage for stage in ("val", "test") if any(k.startswith(f"{stage}/") for k in metrics)]
    table = Table(title=title)
    table.add_column("metric")
    for stage in stages:
        table.add_column("best val" if stage == "val" else stage, justify="right")
    for name in names:
        cells = []
        for stage in stages:
            value = metrics.get(f"{stage}/{name}")
            cells.append("" if value is None else f"{value:.4f}")
        table.add_row(name, *cells)
    Console().print(table)


def run(cfg: DictConfig) -> float | None:
    """Entry point for ``train.py``: train, and turn config mistakes into one line + exit 2.

    Returns the monitored validation metric (what a Hydra sweeper optimises), or ``None``.
    """
    # Lightning 2.6 trips over its own pytree deprecation on every step; it is not actionable.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    try:
        metrics = train(cfg)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return metrics.get(cfg.model.get("monitor", ""))
