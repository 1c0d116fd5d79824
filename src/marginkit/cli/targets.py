"""train.py and eval.py on data with verification targets (insightface's ``.bin`` sets).

- :func:`target_monitor` / :func:`target_callbacks`: train.py keeps ``model.monitor`` on a
  target metric and attaches :class:`~marginkit.models.verification_targets.VerificationTargets`
  first among the callbacks.
- :func:`evaluate_targets_from_config`: eval.py's face-recognition table (target, accuracy ±
  std, threshold, TAR@FAR) and ``metrics.json``.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, open_dict

from marginkit.cli.config import ConfigError, first_line, instantiate_node

log = logging.getLogger(__name__)


def has_targets(datamodule: Any) -> bool:
    """Whether the datamodule evaluates verification targets (``verification_targets()``)."""
    return callable(getattr(datamodule, "verification_targets", None))


def target_monitor(cfg: DictConfig, datamodule: Any) -> None:
    """Point ``model.monitor`` at a metric the targets log (before the callbacks are built).

    A ``val/<target>/<metric>`` monitor must name a loaded target; any other (e.g. the
    default ``val/map@r``, which this data never logs) becomes ``val/lfw/accuracy`` (the first
    target's when there is no ``lfw``).
    """
    from marginkit.metrics.functional.insightface import is_target_metric

    names = [target.name for target in datamodule.verification_targets()]
    if not names:
        raise ConfigError(
            f"`data.val_targets`: no verification set in {datamodule.root} (no .bin file); "
            "give data.val_targets=[...] or add lfw.bin, cfp_fp.bin, …"
        )
    monitor = cfg.model.get("monitor", "")
    if is_target_metric(monitor):
        if monitor.split("/")[1] not in names:
            raise ConfigError(
                f"`model.monitor` {monitor!r} names a target that is not evaluated "
                f"(data.val_targets: {names})"
            )
        return
    chosen = f"val/{'lfw' if 'lfw' in names else names[0]}/accuracy"
    log.info("model.monitor %s is not logged by these data: monitoring %s", monitor, chosen)
    with open_dict(cfg):
        cfg.model.monitor = chosen


def target_callbacks(datamodule: Any) -> list[Any]:
    """The callbacks to put first: a ``VerificationTargets`` when the data has targets."""
    if not has_targets(datamodule):
        return []
    import warnings

    from marginkit.models.verification_targets import VerificationTargets

    # These data have no val/test loaders on purpose (the callback evaluates the targets).
    warnings.filterwarnings("ignore", message="Total length of `list` across ranks is zero")
    return [VerificationTargets(every_n_steps=getattr(datamodule, "val_every_n_steps", None))]


def evaluate_targets_from_config(cfg: DictConfig) -> dict[str, float]:
    """eval.py on data with targets: score every target, print the table, write metrics.json.

    The names are the training run's (``val/<target>/accuracy`` …), so the numbers of a
    checkpoint compare directly with its ``metrics.json``.
    """
    import torch

    from marginkit.cli.checkpoint import load_module
    from marginkit.cli.options import write_metrics
    from marginkit.models.verification_targets import evaluate_targets

    module = load_module(cfg)
    datamodule = instantiate_node(cfg, "data")
    try:
        datamodule.setup("validate")
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise ConfigError(
            f"`data` ({cfg.data.get('_target_', '?')}): {first_line(error)}"
        ) from error
    accelerator = str(cfg.get("trainer", {}).get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        module = module.cuda()
    metrics = evaluate_targets(module.backbone, datamodule, tuple(module.far_targets))
    path = write_metrics(cfg, metrics)
    print_target_table(metrics)
    log.info("metrics written to %s", path)
    return metrics


def print_target_table(metrics: dict[str, float]) -> None:
    """The face-recognition table: a row per target, accuracy ± std, threshold, TAR@FAR."""
    from rich.console import Console
    from rich.table import Table

    targets = sorted({key.split("/")[1] for key in metrics if key.count("/") == 2})
    fars = sorted(
        {key.rsplit("/", 1)[1] for key in metrics if "/tar@far=" in key},
        key=lambda name: float(name.split("=")[1]),
    )
    table = Table(title="verification (insightface protocol, flip test, 10 folds)")
    for column in ("target", "accuracy", "threshold", *fars):
        table.add_column(column, justify="left" if column == "target" else "right")
    for target in targets:
        row = [
            target,
            f"{100 * metrics[f'val/{target}/accuracy']:.2f} ± "
            f"{100 * metrics[f'val/{target}/accuracy_std']:.2f} %",
            f"{metrics[f'val/{target}/threshold']:.3f}",
        ]
        row += [
            f"{metrics[key]:.4f}" if (key := f"val/{target}/{far}") in metrics else "—"
            for far in fars
        ]
        table.add_row(*row)
    Console().print(table)
