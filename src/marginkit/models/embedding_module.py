"""The LightningModule that pairs a backbone with a loss head and evaluates retrieval."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from marginkit.metrics import RetrievalMetrics, VerificationMetrics

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]

# Metrics for which a smaller value is better; every other logged metric is "higher is better".
_LOWER_IS_BETTER = ("eer", "loss", "accuracy_std", "n_queries_without_match")


def metric_mode(name: str) -> str:
    """Return ``"min"`` if a smaller value of metric ``name`` is better, else ``"max"``.

    Example:
        >>> metric_mode("val/precision@1"), metric_mode("val/eer")
        ('max', 'min')
    """
    short = name.rsplit("/", 1)[-1]
    return "min" if short in _LOWER_IS_BETTER else "max"


class EmbeddingModule(L.LightningModule):
    """A backbone producing embeddings, trained by a loss head, evaluated by retrieval.

    Training: ``loss = loss_head(backbone(x), y)``, logged as ``train/loss``. A non-finite loss
    stops training with a ``FloatingPointError`` naming the step (no silent NaN training).

    Validation / test: embeddings of the evaluation split feed
    :class:`~marginkit.metrics.RetrievalMetrics` (leave-one-out retrieval: ``precision@k``,
    ``cmc@k``, ``map@k``, ``r_precision``, ``map@r``) and, when ``verification`` is on,
    :class:`~marginkit.metrics.VerificationMetrics` over every pair of items inside each
    evaluation batch (score = cosine, same label = positive pair: ``auc``, ``eer``,
    ``tar@far=…``, ``accuracy``). They are logged as ``val/<name>`` / ``test/<name>``.
    The validation values of the epoch with the best ``monitor`` value are kept in
    :attr:`best_val_metrics`, the test values in :attr:`test_metrics`.

    The module does not care which head it holds: any ``nn.Module`` with
    ``forward(embeddings, labels) -> loss`` works; its parameters (class weights) are optimised
    together with the backbone's.

    Args:
        backbone: maps a batch of inputs to (N, D) embeddings.
        loss: the loss head, ``forward(embeddings, labels) -> scalar``.
        optimizer: a factory ``params -> Optimizer`` (e.g. Hydra ``_partial_: true`` config or
            ``functools.partial(torch.optim.AdamW, lr=1e-3)``). Default AdamW(lr=1e-3).
        scheduler: optional factory ``optimizer -> LRScheduler``; if it accepts a
            ``total_steps`` argument it receives the trainer's estimated number of optimizer
            steps. Stepped every optimizer step.
        top_k: the k of ``precision@k``, ``cmc@k`` and ``map@k``.
        far_targets: false-accept rates at which ``tar@far`` is reported.
        verification: also compute verification metrics on the evaluation split.
        monitor: the validation metric used to pick the best epoch (and by the checkpoint and
            early-stopping callbacks of the CLI).

    Example:
        >>> import torch
        >>> from marginkit.losses import ArcFaceLoss
        >>> from marginkit.models.backbones import MLP
        >>> module = EmbeddingModule(MLP(64, (32,), 16), ArcFaceLoss(16, 6, s=16.0))
        >>> module(torch.randn(3, 64)).shape
        torch.Size([3, 16])
    """

    def __init__(
        self,
        backbone: nn.Module,
        loss: nn.Module,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        top_k: Sequence[int] = (1, 5, 10),
        far_targets: Sequence[float] = (1e-4, 1e-3, 1e-2),
        verification: bool = True,
        monitor: str = "val/precision@1",
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"`backbone` must be an nn.Module, got {type(backbone).__name__}")
        if not isinstance(loss, nn.Module):
            raise TypeError(f"`loss` must be an nn.Module, got {type(loss).__name__}")
        self.save_hyperparameters(ignore=["backbone", "loss", "optimizer", "scheduler"])
        self.backbone = backbone
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.verification = bool(verification)
        # The metrics validate top_k and far_targets (ValueError naming the argument).
        self.val_retrieval = RetrievalMetrics(top_k=top_k)
        self.test_retrieval = RetrievalMetrics(top_k=top_k)
        self.val_verification = VerificationMetrics(far_targets=far_targets)
        self.test_verification = VerificationMetrics(far_targets=far_targets)
        allowed = self.metric_names("val")
        if monitor not in allowed:
            raise ValueError(f"`monitor` must be one of {allowed}, got {monitor!r}")
        self.monitor = monitor
        self.monitor_mode = metric_mode(monitor)
        self.best_val_metrics: dict[str, float] = {}
        self.test_metrics: dict[str, float] = {}

    def metric_names(self, stage: str) -> list[str]:
        """Names this module logs for ``stage`` (``"val"`` or ``"test"``), e.g. ``val/cmc@5``."""
        names = [*self.val_retrieval.names]
        if self.verification:
            names += self.val_verification.names
        return [f"{stage}/{name}" for name in names]

    def forward(self, x: Tensor) -> Tensor:
        """Return the backbone's embeddings of ``x``."""
        return self.backbone(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, labels = batch
        loss = self.loss(self.backbone(inputs), labels)
        if not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"the training loss is {loss.detach().flatten()[0].item()} at step "
                f"{self.global_step} (batch {batch_idx}); lower the learning rate or the "
                "scale `s`, or check the inputs for NaN"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=labels.shape[0])
        return loss

    def _evaluation_step(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        inputs, labels = batch
        embeddings = self.backbone(inputs)
        getattr(self, f"{stage}_retrieval").update(embeddings, labels)
        if self.verification and labels.shape[0] > 1:
            unit = torch.nn.functional.normalize(embeddings.float(), dim=1)
            first, second = torch.triu_indices(
                len(labels), len(labels), offset=1, device=labels.device
            )
            scores = (unit[first] * unit[second]).sum(1)
            getattr(self, f"{stage}_verification").update_scores(
                scores, labels[first] == labels[second]
            )

    def _evaluation_results(self, stage: str) -> dict[str, float]:
        results = dict(getattr(self, f"{stage}_retrieval").compute())
        getattr(self, f"{stage}_retrieval").reset()
        if self.verification:
            results.update(getattr(self, f"{stage}_verification").compute())
            getattr(self, f"{stage}_verification").reset()
        return {f"{stage}/{name}": float(value) for name, value in results.items()}

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        results = self._evaluation_results("val")
        self.log_dict(results, prog_bar=False)
        if self.monitor in results and not self.trainer.sanity_checking:
            value = results[self.monitor]
            best = self.best_val_metrics.get(self.monitor)
            improved = best is None or (
                value > best if self.monitor_mode == "max" else value < best
            )
            if improved and math.isfinite(value):
                self.best_val_metrics = results

    def on_test_epoch_end(self) -> None:
        self.test_metrics = self._evaluation_results("test")
        self.log_dict(self.test_metrics)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["best_val_metrics"] = dict(self.best_val_metrics)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_val_metrics = dict(checkpoint.get("best_val_metrics", {}))

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            optimizer = torch.optim.AdamW(self.parameters(), lr=1e-3)
        else:
            optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        if "total_steps" in inspect.signature(self.scheduler_factory).parameters:
            total_steps = int(self.trainer.estimated_stepping_batches)
            scheduler = self.scheduler_factory(optimizer, total_steps=total_steps)
        else:
            scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
