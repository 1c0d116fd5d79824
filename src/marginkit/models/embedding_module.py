"""The LightningModule that pairs a backbone with a loss head and evaluates retrieval."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from marginkit.metrics.functional.insightface import is_target_metric
from marginkit.metrics.functional.retrieval import _check_top_k
from marginkit.metrics.functional.verification import _check_far_targets
from marginkit.models.components import (
    check_component_config,
    describe_component,
    instantiate_component,
)
from marginkit.models.evaluation import (
    EvaluationItems,
    evaluate_embeddings,
    gather_and_deduplicate,
    metric_names,
)
from marginkit.models.metric_direction import metric_mode

__all__ = ["EmbeddingModule", "metric_mode"]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]
NONFINITE_LOSS_ACTIONS = ("raise", "skip")
# Checkpoint key of a one-line description of the model that wrote it (for mismatch errors).
_DESCRIPTION_KEY = "marginkit_model"
# Checkpoint keys of what evaluating the model needs besides its weights: the data config it
# was trained with (image size, crop, normalisation, channels) and the shape of one input.
_DATA_KEY = "marginkit_data"
_INPUT_SHAPE_KEY = "marginkit_input_shape"
_NO_CONFIG = (
    "this checkpoint was saved from an EmbeddingModule built from module objects, so it "
    "cannot rebuild them: pass `backbone=` and `loss=` to `load_from_checkpoint`, or build the "
    "module from `_target_` configs (as train.py does)"
)


class EmbeddingModule(L.LightningModule):
    """A backbone producing embeddings, trained by a loss head, evaluated by retrieval.

    Training: ``loss = loss_head(backbone(x), y)``, logged as ``train/loss`` (and a head's
    ``last_logs`` dict as ``train/<key>``). A non-finite loss stops training with a
    ``FloatingPointError`` naming the step and the last finite loss, or, with
    ``on_nonfinite_loss="skip"``, skips the batch (counted in ``train/skipped_batches``).

    Validation / test, at the end of the epoch, over all the items of the split (gathered from
    every rank under DDP, duplicates padded by the distributed sampler dropped by dataset index,
    computed once and identical on every rank; see
    :func:`~marginkit.models.evaluation.evaluate_embeddings`): leave-one-out retrieval
    (``precision@k``, ``cmc@k``, ``map@k``, ``r_precision``, ``map@r``) and verification on
    the datamodule's pair list ``datamodule.verification_pairs(stage)`` (``auc``, ``eer``,
    ``tar@far=…``, ``accuracy``, ``accuracy_std``), logged as ``val/<name>`` / ``test/<name>``.
    The numbers do not depend on the batch size or the order of the batches. Evaluation batches
    are ``(inputs, labels, indices)`` with the items' dataset indices (or ``(inputs, labels)``:
    then single-process order is used and DDP duplicates cannot be detected). The validation
    values of the epoch with the best ``monitor`` value are kept in :attr:`best_val_metrics`
    (that epoch in :attr:`best_val_epoch`),
    the test values in :attr:`test_metrics`, the evaluated items in :attr:`evaluated`.

    Checkpoints also carry what evaluating the model needs: :attr:`input_shape` (one input
    item's shape, recorded at the first training or evaluation batch) and :attr:`data_config`
    (the data settings it was trained with, set by the CLI), restored by
    ``load_from_checkpoint``. They load in one process in both the per-shard form of a
    model-parallel head and the merged one (``python -m marginkit.distributed.checkpoint merge``).

    The parts can be modules or ``_target_`` configs (mappings, the Hydra convention). Built
    from configs, the module stores them in its checkpoints, and
    ``EmbeddingModule.load_from_checkpoint(path)`` rebuilds it alone (``weights_only`` loading);
    a checkpoint of another architecture or class count fails with a message naming both.

    Args:
        backbone: maps a batch of inputs to (N, D) embeddings; an ``nn.Module`` or a config.
        loss: the loss head, ``forward(embeddings, labels) -> scalar``; a module or a config.
        optimizer: a factory ``params -> Optimizer`` (e.g. ``functools.partial(torch.optim.AdamW,
            lr=1e-3)``) or a ``_partial_: true`` config. Default AdamW(lr=1e-3).
        scheduler: optional factory ``optimizer -> LRScheduler`` or config; if it accepts a
            ``total_steps`` argument it receives the trainer's estimated number of optimizer
            steps. Stepped every optimizer step.
        top_k: the k of ``precision@k``, ``cmc@k`` and ``map@k``.
        far_targets: false-accept rates at which ``tar@far`` is reported.
        verification: ``True``: verification metrics on the datamodule's pair list (an error if
            it has none); ``None``: when the datamodule has a pair list; ``False``: never.
        monitor: the validation metric used to pick the best epoch (and by the checkpoint and
            early-stopping callbacks of the CLI).
        on_nonfinite_loss: ``"raise"`` (stop) or ``"skip"`` (drop the batch; single process).

    Example:
        >>> import torch
        >>> module = EmbeddingModule(
        ...     {"_target_": "marginkit.models.backbones.MLP", "in_features": 64,
        ...      "hidden": [32], "embedding_dim": 16},
        ...     {"_target_": "marginkit.losses.ArcFaceLoss", "in_features": 16,
        ...      "num_classes": 6, "s": 16.0})
        >>> module(torch.randn(3, 64)).shape
        torch.Size([3, 16])
        >>> module.hparams.loss["num_classes"]
        6
    """

    def __init__(
        self,
        backbone: nn.Module | Mapping[str, Any],
        loss: nn.Module | Mapping[str, Any],
        optimizer: OptimizerFactory | Mapping[str, Any] | None = None,
        scheduler: SchedulerFactory | Mapping[str, Any] | None = None,
        top_k: Sequence[int] = (1, 5, 10),
        far_targets: Sequence[float] = (1e-4, 1e-3, 1e-2),
        verification: bool | None = None,
        monitor: str = "val/precision@1",
        on_nonfinite_loss: str = "raise",
    ) -> None:
        super().__init__()
        backbone, backbone_config = self._part("backbone", backbone, module=True)
        loss, loss_config = self._part("loss", loss, module=True)
        optimizer, optimizer_config = self._part("optimizer", optimizer, module=False)
        scheduler, scheduler_config = self._part("scheduler", scheduler, module=False)
        self.top_k = _check_top_k(top_k)
        self.far_targets = _check_far_targets(far_targets)
        if verification is not None and not isinstance(verification, bool):
            raise TypeError(f"`verification` must be a bool or None, got {verification!r}")
        if on_nonfinite_loss not in NONFINITE_LOSS_ACTIONS:
            raise ValueError(
                f"`on_nonfinite_loss` must be one of {NONFINITE_LOSS_ACTIONS}, "
                f"got {on_nonfinite_loss!r}"
            )
        self.verification = verification
        self.on_nonfinite_loss = on_nonfinite_loss
        allowed = self.metric_names("val")
        # val/<target>/<metric>: logged by the VerificationTargets callback (insightface's sets)
        if monitor not in allowed and not is_target_metric(monitor):
            raise ValueError(
                f"`monitor` must be one of {allowed} or a verification target's "
                f"val/<target>/<accuracy|accuracy_std|threshold|best_accuracy|tar@far=f>, "
                f"got {monitor!r}"
            )
        self.monitor = monitor
        self.monitor_mode = metric_mode(monitor)
        # What a checkpoint needs to rebuild the module (plain containers: weights_only-safe).
        self.save_hyperparameters(
            {
                "backbone": backbone_config,
                "loss": loss_config,
                "optimizer": optimizer_config,
                "scheduler": scheduler_config,
                "top_k": list(self.top_k),
                "far_targets": list(self.far_targets),
                "verification": verification,
                "monitor": monitor,
                "on_nonfinite_loss": on_nonfinite_loss,
            }
        )
        self.backbone = backbone
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.best_val_metrics: dict[str, float] = {}
        self.best_val_epoch: int | None = None
        self.test_metrics: dict[str, float] = {}
        self.evaluated: dict[str, EvaluationItems] = {}
        self._outputs: dict[str, list[tuple[Tensor, Tensor, Tensor | None]]] = {}
        self._last_finite_loss: tuple[Tensor, int] | None = None
        self._skipped_batches = 0
        # What evaluation needs besides the weights, stored in checkpoints (plain containers).
        self.data_config: dict[str, Any] | None = None
        self.input_shape: tuple[int, ...] | None = None

    @staticmethod
    def _part(name: str, part: Any, module: bool) -> tuple[Any, dict[str, Any] | None]:
        """Return ``(object, config)``: a config is built, an object is kept (config None)."""
        if part is None:
            if module:
                raise TypeError(f"`{name}` is None: {_NO_CONFIG}")
            return None, None
        if isinstance(part, nn.Module):
            if not module:
                raise TypeError(f"`{name}` must be a factory or a config, got an nn.Module")
            return part, None
        if isinstance(part, Mapping) or type(part).__name__ == "DictConfig":
            config = check_component_config(name, part)
            built = instantiate_component(name, config)
            if module and not isinstance(built, nn.Module):
                raise TypeError(
                    f"`{name}` config must build an nn.Module, {config['_target_']} gave "
                    f"{type(built).__name__}"
                )
            return built, config
        if module:
            raise TypeError(
                f"`{name}` must be an nn.Module or a `_target_` config, got {type(part).__name__}"
            )
        if not callable(part):
            raise TypeError(f"`{name}` must be callable or a config, got {type(part).__name__}")
        return part, None

    def metric_names(self, stage: str) -> list[str]:
        """Names this module may log for ``stage`` (``"val"`` or ``"test"``), e.g. ``val/cmc@5``.

        The verification names are included unless ``verification=False``; with
        ``verification=None`` they are logged only when the datamodule has a pair list.
        """
        names = metric_names(self.top_k, self.far_targets, self.verification is not False)
        return [f"{stage}/{name}" for name in names]

    def forward(self, x: Tensor) -> Tensor:
        """Return the backbone's embeddings of ``x``."""
        return self.backbone(x)

    # ------------------------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.on_nonfinite_loss == "skip" and self.trainer.world_size > 1:
            raise ValueError(
                "`on_nonfinite_loss='skip'` works on one process only (a skipped batch on one "
                "DDP rank would stall the others' gradient all-reduce); use 'raise'"
            )

    def configure_model(self) -> None:
        """Shard a model-parallel head once the process group exists (before DDP wraps us).

        A head with a ``shard()`` method (:class:`~marginkit.losses.ShardedMarginHead`) keeps
        its slice of the class weights; its ``sharded_parameter_names`` are kept out of DDP's
        gradient all-reduce (each rank's shard gets its own, exact gradient).
        """
        shard = getattr(self.loss, "shard", None)
        if shard is None:
            return
        shard()
        names = [f"loss.{name}" for name in getattr(self.loss, "sharded_parameter_names", ())]
        self._ddp_params_and_buffers_to_ignore = names

    def _sharded_parameters(self) -> set[int]:
        names = getattr(self.loss, "sharded_parameter_names", ())
        return {id(getattr(self.loss, name)) for name in names}

    def _record_input_shape(self, inputs: Tensor) -> None:
        if self.input_shape is None and isinstance(inputs, Tensor) and inputs.ndim >= 2:
            self.input_shape = tuple(int(size) for size in inputs.shape[1:])

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor | None:
        inputs, labels = batch[0], batch[1]
        self._record_input_shape(inputs)
        loss = self.loss(self.backbone(inputs), labels)
        if not bool(torch.isfinite(loss.detach()).all()):
            return self._nonfinite_loss(loss, batch_idx)
        self._last_finite_loss = (loss.detach(), self.global_step)
        batch_size = labels.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        logs = getattr(self.loss, "last_logs", None)
        if isinstance(logs, Mapping) and logs:
            self.log_dict(
                {f"train/{key}": float(value) for key, value in logs.items()},
                batch_size=batch_size,
            )
        return loss

    def _nonfinite_loss(self, loss: Tensor, batch_idx: int) -> None:
        # A head that flags bad labels by a NaN loss (no host read of its own) names them here.
        explain = getattr(self.loss, "check_last_labels", None)
        if explain is not None:
            explain()
        value = loss.detach().flatten()[0].item()
        if self._last_finite_loss is None:
            last = "no finite loss before it"
        else:
            last_value, last_step = self._last_finite_loss
            last = f"the last finite loss was {last_value.item():.6g} at step {last_step}"
        where = f"at step {self.global_step} (batch {batch_idx}); {last}"
        if self.on_nonfinite_loss == "raise":
            raise FloatingPointError(
                f"the training loss is {value} {where}; lower the learning rate or the scale "
                "`s`, check the inputs for NaN, or set `on_nonfinite_loss='skip'`"
            )
        self._skipped_batches += 1
        warnings.warn(f"skipped a batch: the training loss is {value} {where}", stacklevel=2)
        self.log("train/skipped_batches", float(self._skipped_batches), batch_size=1)
        return None

    # ------------------------------------------------------------------------------------
    # evaluation
    # ------------------------------------------------------------------------------------
    def _evaluation_step(self, batch: Sequence[Tensor], stage: str) -> None:
        inputs, labels = batch[0], batch[1]
        self._record_input_shape(inputs)
        indices = batch[2] if len(batch) > 2 else None
        embeddings = self.backbone(inputs).detach().float()
        self._outputs.setdefault(stage, []).append(
            (embeddings, labels.detach(), None if indices is None else indices.detach().long())
        )

    def _verification_pairs(self, stage: str) -> Any:
        if self.verification is False:
            return None
        datamodule = getattr(self.trainer, "datamodule", None)
        pairs_of = getattr(datamodule, "verification_pairs", None)
        pairs = pairs_of(stage) if callable(pairs_of) else None
        if pairs is None and self.verification:
            raise ValueError(
                f"`verification` is on but the datamodule ({type(datamodule).__name__}) has no "
                f"verification pair list for {stage!r} (`verification_pairs`); set "
                "`verification` to None or False"
            )
        return pairs

    def _evaluation_results(self, stage: str) -> dict[str, float]:
        outputs = self._outputs.pop(stage, [])
        if not outputs:
            return {}
        with_indices = all(indices is not None for _, _, indices in outputs)
        items = gather_and_deduplicate(
            torch.cat([embeddings for embeddings, _, _ in outputs]),
            torch.cat([labels for _, labels, _ in outputs]),
            torch.cat([indices for _, _, indices in outputs]) if with_indices else None,
        )
        self.evaluated[stage] = EvaluationItems(
            *(None if part is None else part.cpu() for part in items)
        )
        pairs = self._verification_pairs(stage)  # on every rank: an error stops them all
        results: dict[str, float] | None = None
        if self.trainer.is_global_zero:  # the k-NN once, on rank 0
            results = evaluate_embeddings(
                items.embeddings,
                items.labels,
                pairs,
                self.top_k,
                self.far_targets,
                items.indices,
            )
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            shared = [results]
            torch.distributed.broadcast_object_list(shared, src=0)
            results = shared[0]
        assert results is not None
        return {f"{stage}/{name}": float(value) for name, value in results.items()}

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._outputs.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self._outputs.pop("test", None)

    def on_validation_epoch_end(self) -> None:
        results = self._evaluation_results("val")
        if not results:
            return
        self.log_dict(results, prog_bar=False)
        if self.monitor not in results and not self.trainer.sanity_checking:
            raise ValueError(
                f"the monitored metric {self.monitor!r} was not computed (logged: "
                f"{sorted(results)}); does the datamodule give a verification pair list?"
            )
        if self.monitor in results and not self.trainer.sanity_checking:
            value = results[self.monitor]
            best = self.best_val_metrics.get(self.monitor)
            improved = best is None or (
                value > best if self.monitor_mode == "max" else value < best
            )
            if improved and math.isfinite(value):
                self.best_val_metrics = results
                self.best_val_epoch = int(self.current_epoch)

    def on_test_epoch_end(self) -> None:
        self.test_metrics = self._evaluation_results("test")
        self.log_dict(self.test_metrics)

    # ------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------
    def describe(self) -> str:
        """One line naming the backbone and the loss head (from their configs when known)."""
        hparams = self.hparams
        backbone = describe_component(hparams.get("backbone"), type(self.backbone).__name__)
        loss = describe_component(hparams.get("loss"), type(self.loss).__name__)
        return f"backbone {backbone}, loss {loss}"

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["best_val_metrics"] = dict(self.best_val_metrics)
        checkpoint["best_val_epoch"] = self.best_val_epoch
        checkpoint[_DESCRIPTION_KEY] = self.describe()
        if self.data_config is not None:
            checkpoint[_DATA_KEY] = self.data_config
        if self.input_shape is not None:
            checkpoint[_INPUT_SHAPE_KEY] = list(self.input_shape)
        self._drop_sharded_optimizer_state(checkpoint)

    def _drop_sharded_optimizer_state(self, checkpoint: dict[str, Any]) -> None:
        """Leave the per-rank optimizer state of sharded class weights out of the checkpoint.

        Only rank 0's optimizer state is saved, and other ranks' shards have other shapes; the
        momentum of the sharded weights restarts on resume (their weights are all saved).
        """
        sharded = self._sharded_parameters()
        if not sharded or self._trainer is None:
            return
        for optimizer, saved in zip(
            self.trainer.optimizers, checkpoint.get("optimizer_states", []), strict=False
        ):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            for index, param in enumerate(params):
                if id(param) in sharded:
                    saved.get("state", {}).pop(index, None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_checkpoint_fits(checkpoint)
        self.best_val_metrics = dict(checkpoint.get("best_val_metrics", {}))
        self.best_val_epoch = checkpoint.get("best_val_epoch")
        if checkpoint.get(_DATA_KEY) is not None:
            self.data_config = dict(checkpoint[_DATA_KEY])
        if checkpoint.get(_INPUT_SHAPE_KEY) is not None:
            self.input_shape = tuple(int(size) for size in checkpoint[_INPUT_SHAPE_KEY])

    def _check_checkpoint_fits(self, checkpoint: dict[str, Any]) -> None:
        """Raise ``ValueError`` naming both models if the checkpoint's weights do not fit.

        Class weights saved per shard (``weight_shards.<r>``) are compared merged, on both
        sides: a model-parallel head loads the per-shard and the merged form for any world size.
        """
        from marginkit.distributed.checkpoint import merge_shards

        stored = checkpoint.get("state_dict")
        if stored is None:
            return
        stored = merge_shards(stored)
        own = merge_shards(self.state_dict())
        missing = sorted(set(own) - set(stored))
        unexpected = sorted(set(stored) - set(own))
        mismatched = [
            f"{key} {tuple(stored[key].shape)} vs {tuple(own[key].shape)}"
            for key in sorted(set(own) & set(stored))
            if isinstance(stored[key], Tensor) and stored[key].shape != own[key].shape
        ]
        if not (missing or unexpected or mismatched):
            return
        # Not the hyper-parameters: load_from_checkpoint(path, **overrides) has merged into them.
        theirs = checkpoint.get(_DESCRIPTION_KEY, "(not recorded)")
        details = []
        if mismatched:
            details.append("shapes (checkpoint vs module): " + "; ".join(mismatched[:5]))
        if missing:
            details.append(f"missing in the checkpoint: {', '.join(missing[:5])}")
        if unexpected:
            details.append(f"not in the module: {', '.join(unexpected[:5])}")
        raise ValueError(
            f"the checkpoint does not fit this model. checkpoint: {theirs}; "
            f"this module: {self.describe()}; " + "; ".join(details)
        )

    # ------------------------------------------------------------------------------------
    # optimisation
    # ------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            optimizer = torch.optim.AdamW(self.parameters(), lr=1e-3)
        else:
            optimizer = self.optimizer_factory(self.parameters())
        attach = getattr(self.loss, "attach_optimizer", None)
        if attach is not None:  # Partial FC swaps the sampled rows' optimizer state
            attach(optimizer)
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
