"""Verification sets evaluated during training (insightface's ``CallBackVerification``) and by eval.py.

:func:`evaluate_targets` embeds every image of each target and its horizontal flip (the sum),
each DDP rank a contiguous share, gathers the embeddings and scores all pairs once, on rank 0,
with :func:`~marginkit.metrics.functional.insightface.target_verification`; every rank gets the
same answer. :class:`VerificationTargets` runs it when a validation would run (the end of every
``check_val_every_n_epoch``-th epoch) and every ``every_n_steps`` optimizer steps, and logs
``val/<target>/accuracy``, ``accuracy_std``, ``threshold``, ``tar@far=<f>`` and
``best_accuracy`` (so ``model.monitor=val/lfw/accuracy`` drives checkpoints and early stopping).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor

from marginkit.metrics.functional.insightface import flip_sum, target_verification
from marginkit.models.metric_direction import metric_mode

log = logging.getLogger(__name__)


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def _embed_share(
    backbone: torch.nn.Module, datamodule: Any, target: Any, device: torch.device
) -> Tensor:
    """All of ``target``'s flip-summed embeddings, this rank embedding its contiguous share."""
    world_size, rank = _world()
    n_items = len(target.images)
    start, end = n_items * rank // world_size, n_items * (rank + 1) // world_size
    parts = []
    for images, _ in datamodule.target_dataloader(target, range(start, end)):
        parts.append(flip_sum(backbone, images.to(device)).float())
    dim = parts[0].shape[1] if parts else int(_probe_dim(backbone, target, device))
    share = torch.cat(parts) if parts else torch.zeros(0, dim, device=device)
    if world_size == 1:
        return share
    widest = -(-n_items // world_size) + 1
    padded = torch.zeros(widest, dim, device=device, dtype=share.dtype)
    padded[: share.shape[0]] = share
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    torch.distributed.all_gather(gathered, padded)
    pieces = []
    for other, block in enumerate(gathered):
        size = n_items * (other + 1) // world_size - n_items * other // world_size
        pieces.append(block[:size])
    return torch.cat(pieces)


def _probe_dim(backbone: torch.nn.Module, target: Any, device: torch.device) -> int:
    image, _ = target.images[0]
    return int(backbone(image[None].to(device)).shape[1])


def evaluate_targets(
    backbone: torch.nn.Module,
    datamodule: Any,
    far_targets: Sequence[float] = (1e-4, 1e-3, 1e-2),
    prefix: str = "val",
) -> dict[str, float]:
    """insightface's verification of every target of ``datamodule``: ``{prefix/target/metric}``.

    ``backbone`` is put in eval mode and run without gradients (its mode is restored). Under
    DDP every rank must call it: the backbone's buffers (BatchNorm statistics) are first
    broadcast from rank 0, each rank embeds a contiguous share, the metrics are computed on
    rank 0 and broadcast. Pass the backbone, not a module holding a class-sharded head.
    """
    try:
        device = next(backbone.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    was_training = backbone.training
    backbone.eval()
    world_size, rank = _world()
    if world_size > 1:
        # DDP keeps the parameters equal but each rank's BatchNorm statistics move with its own
        # batches (rank 0's are broadcast at the next forward, and are what checkpoints hold):
        # every rank embeds with rank 0's.
        for buffer in backbone.buffers():
            torch.distributed.broadcast(buffer, src=0)
    results: dict[str, float] | None = {}
    try:
        with torch.no_grad():
            for target in datamodule.verification_targets():
                embeddings = _embed_share(backbone, datamodule, target, device)
                if rank == 0:
                    scores = target_verification(
                        embeddings, target.issame, datamodule.n_folds, far_targets
                    )
                    results.update(  # type: ignore[union-attr]
                        {f"{prefix}/{target.name}/{key}": v for key, v in scores.items()}
                    )
    finally:
        backbone.train(was_training)
    if world_size > 1:
        shared = [results if rank == 0 else None]
        torch.distributed.broadcast_object_list(shared, src=0)
        results = shared[0]
    return dict(results or {})


class VerificationTargets(L.Callback):
    """Evaluate the datamodule's verification targets while training; log and keep the best.

    Runs at the end of every training epoch on which Lightning would validate
    (``trainer.check_val_every_n_epoch``) and, with ``every_n_steps``, every that many
    optimizer steps. The values go to the loggers (at the global step) and to
    ``trainer.callback_metrics`` (what ``ModelCheckpoint`` and ``EarlyStopping`` read);
    ``val/<target>/best_accuracy`` is the highest accuracy so far. When the module's
    ``monitor`` is one of these names, its ``best_val_metrics`` (what train.py writes to
    ``metrics.json``) are those of the best evaluation. Attach it before the checkpoint and
    early-stopping callbacks (train.py puts it first).

    Args:
        every_n_steps: also evaluate every this many optimizer steps (None: per epoch only).
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        self.every_n_steps = every_n_steps
        self.best_accuracy: dict[str, float] = {}
        self._last_step = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self._evaluate(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        every = trainer.check_val_every_n_epoch or 1
        if (trainer.current_epoch + 1) % every == 0:
            self._evaluate(trainer, pl_module)

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == self._last_step:  # an epoch end right after a step's
            return
        self._last_step = trainer.global_step
        context = getattr(trainer.precision_plugin, "forward_context", None)
        with context() if context is not None else contextlib.nullcontext():
            results = evaluate_targets(
                getattr(pl_module, "backbone", pl_module),
                trainer.datamodule,
                getattr(pl_module, "far_targets", (1e-3,)),
            )
        for name in [key for key in results if key.endswith("/accuracy")]:
            target = name[: -len("/accuracy")]
            best = max(self.best_accuracy.get(target, -math.inf), results[name])
            self.best_accuracy[target] = best
            results[f"{target}/best_accuracy"] = best
        device = pl_module.device
        trainer.callback_metrics.update(
            {key: torch.tensor(value, device=device) for key, value in results.items()}
        )
        for logger in trainer.loggers:
            logger.log_metrics(results, step=trainer.global_step)
        if trainer.is_global_zero:
            for target in sorted({key.rsplit("/", 1)[0] for key in results}):
                log.info(
                    "[%s][%d] accuracy-flip %.5f ± %.5f, threshold %.2f, best %.5f",
                    target,
                    trainer.global_step,
                    results[f"{target}/accuracy"],
                    results[f"{target}/accuracy_std"],
                    results[f"{target}/threshold"],
                    results[f"{target}/best_accuracy"],
                )
        self._keep_best(pl_module, results)

    @staticmethod
    def _keep_best(pl_module: Any, results: dict[str, float]) -> None:
        monitor = getattr(pl_module, "monitor", None)
        if monitor not in results or not math.isfinite(results[monitor]):
            return
        best = getattr(pl_module, "best_val_metrics", {}).get(monitor)
        value = results[monitor]
        if best is None or (value > best if metric_mode(monitor) == "max" else value < best):
            pl_module.best_val_metrics = dict(results)

    def state_dict(self) -> dict[str, Any]:
        return {"best_accuracy": dict(self.best_accuracy)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_accuracy = dict(state_dict.get("best_accuracy", {}))
