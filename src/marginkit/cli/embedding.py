"""Embedding one evaluation split with a checkpoint: what ``eval.py`` and ``embed.py`` share.

Load a checkpoint with :meth:`EmbeddingModule.load_from_checkpoint` (backbone and head rebuilt
from the checkpoint alone), build the datamodule of the config, and embed one evaluation split
with a Lightning ``Trainer`` (the ``trainer`` group chooses device and precision), rows in
dataset order. Torch and Lightning are imported only after the config has been checked
(:func:`check_embedding_config`), so a config mistake answers at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from marginkit.cli.checkpoint import (
    describe,
    head_num_classes,
    load_module,
    resolve_checkpoint,
    with_checkpoint_data,
)
from marginkit.cli.config import ConfigError, check_missing, first_line, instantiate_node
from marginkit.cli.options import SPLITS, check_choice, check_flag

if TYPE_CHECKING:  # pragma: no cover
    import lightning as L
    from torch import Tensor, nn

log = logging.getLogger(__name__)

# The Lightning stage that prepares each split.
_STAGES = {"test": "test", "val": "validate"}


@dataclass
class SplitEmbeddings:
    """The embeddings of one split, one row per item, in dataset order.

    Attributes:
        embeddings: (N, D) float32 on the CPU.
        labels: (N,) int64 labels of the items.
        indices: (N,) int64 index of each row's item in the split's dataset.
        paths: the items' file paths, or None when the data has no files (vectors, digits).
    """

    embeddings: Tensor
    labels: Tensor
    indices: Tensor
    paths: list[str] | None

    def as_dict(self) -> dict[str, Any]:
        """The dict ``embed.py`` writes: ``embeddings``, ``labels``, ``paths``, ``indices``."""
        return {
            "embeddings": self.embeddings,
            "labels": self.labels,
            "paths": self.paths,
            "indices": self.indices,
        }


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def build_datamodule(cfg: DictConfig, split: str) -> L.LightningDataModule:
    """Instantiate ``cfg.data`` and build ``split`` (``prepare_data``, then ``setup``)."""
    datamodule = instantiate_node(cfg, "data")
    try:
        datamodule.prepare_data()
        datamodule.setup(_STAGES[split])
    except Exception as error:
        raise ConfigError(
            f"`data` ({cfg.data.get('_target_', '?')}): {first_line(error)}"
        ) from error
    return datamodule


def split_dataloader(datamodule: L.LightningDataModule, split: str) -> Any:
    """The datamodule's unshuffled dataloader of ``split``."""
    return datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()


def data_num_classes(datamodule: Any) -> int | None:
    """The data's number of training classes, building the training split if need be.

    None when the datamodule has none or cannot build its training split (an evaluation-only
    pair-file setup with ``data.root=null``).
    """
    try:
        num_classes = datamodule.num_classes
    except AttributeError:
        return None
    except RuntimeError:  # known after setup("fit")
        try:
            datamodule.setup("fit")
        except Exception as error:
            log.info("no class count check: the training split is not built (%s)", error)
            return None
        try:
            num_classes = datamodule.num_classes
        except (AttributeError, RuntimeError):
            return None
    return num_classes if isinstance(num_classes, int) else None


def check_num_classes(cfg: DictConfig, module: nn.Module, datamodule: Any) -> None:
    """Raise :class:`ConfigError` if the head's and the data's training class counts differ.

    Skipped with ``check_num_classes=false`` and when either side has no class count (a pair
    loss without class weights, an evaluation-only pair-file datamodule).
    """
    if not check_flag(cfg, "check_num_classes"):
        return
    model_classes = head_num_classes(module)
    if model_classes is None:
        return
    data_classes = data_num_classes(datamodule)
    if data_classes is None or model_classes == data_classes:
        return
    raise ConfigError(
        f"`data` ({cfg.data.get('_target_', '?')}) has {data_classes} training classes but the "
        f"checkpoint's head ({describe(module)}) has {model_classes} (`ckpt_path` "
        f"{cfg.ckpt_path!r}); use the training run's data, or check_num_classes=false to "
        "evaluate on another dataset"
    )


def item_paths(datamodule: Any, split: str) -> list[str] | None:
    """The file of every item of ``split`` in dataset order (``datamodule.paths(split)``), or
    None when the data has no files (vectors, digits)."""
    accessor = getattr(datamodule, "paths", None)
    if not callable(accessor):
        return None
    return [str(path) for path in accessor(split)]


def class_names(datamodule: Any, split: str) -> list[str] | None:
    """The name of each label of ``split`` (``datamodule.class_names(split)``), or None."""
    accessor = getattr(datamodule, "class_names", None)
    if not callable(accessor):
        return None
    return [str(name) for name in accessor(split)]


def first_inputs(loader: Any, max_tries: int = 64) -> Tensor:
    """The inputs of the split's first readable item, as a batch of one (no worker started)."""
    from torch.utils.data import default_collate

    dataset = loader.dataset
    collate = loader.collate_fn or default_collate
    for index in range(min(len(dataset), max_tries)):
        batch = collate([dataset[index]])
        if batch is not None:  # None: an unreadable image
            return batch[0] if isinstance(batch, (tuple, list)) else batch
    raise ConfigError(f"`data`: no readable item among the first {max_tries} of the split")


def check_backbone_takes(
    cfg: DictConfig, module: nn.Module, inputs: Tensor, key: str = "data"
) -> None:
    """Raise :class:`ConfigError` naming ``key`` if the backbone cannot embed ``inputs``."""
    import torch

    try:
        with torch.no_grad():
            module.backbone(inputs)
    except Exception as error:
        raise ConfigError(
            f"`{key}`: the checkpoint's model ({describe(module)}) cannot embed inputs of "
            f"shape {tuple(inputs.shape)} ({first_line(error)}); is `ckpt_path` "
            f"{cfg.ckpt_path!r} a model for this data?"
        ) from error


# --------------------------------------------------------------------------------------------
# Embedding
# --------------------------------------------------------------------------------------------
def _prediction_module(backbone: nn.Module, flip: bool) -> L.LightningModule:
    """A LightningModule whose ``predict_step`` maps an evaluation batch ``(inputs, labels[,
    indices])`` to ``(embeddings, labels, indices)`` on the CPU (``()`` for a ``None`` batch:
    every image unreadable).

    It holds the backbone only: the head, possibly millions of class weights, stays off the
    device.
    """
    import lightning as L

    class Embedder(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone

        def predict_step(self, batch: Any, batch_idx: int) -> tuple[Tensor | None, ...]:
            if batch is None:
                return ()
            inputs, labels, *rest = batch
            embeddings = self.backbone(inputs)
            if flip:  # insightface's flip test: the sum of the image's and its mirror's
                embeddings = embeddings + self.backbone(inputs.flip(-1))
            indices = rest[0].cpu() if rest else None
            return embeddings.float().cpu(), labels.cpu(), indices

    return Embedder()


def instantiate_trainer(cfg: DictConfig) -> L.Trainer:
    """The ``trainer`` group without callbacks or loggers, on one device."""
    trainer = instantiate_node(
        cfg, "trainer", callbacks=[], logger=False, enable_checkpointing=False
    )
    if trainer.world_size > 1:
        raise ConfigError(
            f"`trainer.devices`: eval and embed run in one process, got {trainer.world_size} "
            "(set trainer.devices=1)"
        )
    return trainer


def embed_split(
    backbone: nn.Module,
    loader: Any,
    trainer: L.Trainer,
    *,
    flip: bool = False,
    normalize: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Embed every batch of ``loader``; return (embeddings, labels, indices) in dataset order.

    ``flip`` adds the embedding of the horizontally flipped image; ``normalize`` L2-normalises
    the (summed) embeddings. Batches without indices use the items' positions in the loader
    (evaluation loaders are not shuffled).
    """
    import torch

    predictions = trainer.predict(_prediction_module(backbone, flip), dataloaders=loader)
    outputs = [out for out in predictions if out]
    if not outputs:
        raise ConfigError("`data`: the split has no readable item")
    embeddings = torch.cat([out[0] for out in outputs])
    labels = torch.cat([out[1] for out in outputs]).long().reshape(-1)
    if any(out[2] is None for out in outputs):
        indices = torch.arange(len(labels))
    else:
        indices = torch.cat([out[2] for out in outputs]).long().reshape(-1)
    if normalize:
        embeddings = torch.nn.functional.normalize(embeddings, dim=1)
    order = torch.argsort(indices, stable=True)
    return embeddings[order].contiguous(), labels[order], indices[order]


def check_finite_embeddings(cfg: DictConfig, embeddings: Tensor) -> None:
    """Raise :class:`ConfigError` if the checkpoint's model gives NaN or infinite embeddings."""
    import torch

    bad = int((~torch.isfinite(embeddings)).any(dim=1).sum())
    if bad:
        raise ConfigError(
            f"`ckpt_path` {cfg.ckpt_path!r}: the checkpoint produces non-finite embeddings "
            f"({bad} of {embeddings.shape[0]} items NaN or infinite); its weights are not usable "
            "(a diverged run?)"
        )


def check_embedding_config(cfg: DictConfig) -> Path:
    """Check what eval and embed read from the config, before anything heavy is imported.

    Returns:
        The checkpoint file (see :func:`resolve_checkpoint`).
    """
    check_missing(cfg, allowed_missing=set())
    check_choice(cfg, "split", SPLITS)
    check_flag(cfg, "flip")
    if "normalize" in cfg:
        check_flag(cfg, "normalize")
    check_flag(cfg, "check_num_classes")
    return resolve_checkpoint(cfg.ckpt_path)


def embed_from_config(cfg: DictConfig) -> tuple[L.LightningModule, Any, SplitEmbeddings]:
    """What eval and embed share: check the config, load the checkpoint, embed ``cfg.split``.

    Returns:
        The module, the datamodule (with the split built) and the split's embeddings.
    """
    check_embedding_config(cfg)
    import lightning as L

    L.seed_everything(cfg.get("seed", 0), workers=True, verbose=False)
    split, flip = cfg.split, cfg.flip
    module = load_module(cfg)
    cfg = with_checkpoint_data(cfg, module)
    datamodule = build_datamodule(cfg, split)
    check_num_classes(cfg, module, datamodule)
    loader = split_dataloader(datamodule, split)
    probe = first_inputs(loader)
    if flip and probe.ndim != 4:
        raise ConfigError(
            f"`flip` needs image inputs (N, C, H, W), the data gives {tuple(probe.shape)}"
        )
    check_backbone_takes(cfg, module, probe)
    trainer = instantiate_trainer(cfg)
    embeddings, labels, indices = embed_split(
        module.backbone, loader, trainer, flip=flip, normalize=bool(cfg.get("normalize", False))
    )
    check_finite_embeddings(cfg, embeddings)
    paths = item_paths(datamodule, split)
    if paths is not None:
        paths = [paths[index] for index in indices.tolist()]
    return module, datamodule, SplitEmbeddings(embeddings, labels, indices, paths)
