"""Deterministic data order, so that a run resumed mid-epoch continues like an uninterrupted one.

Lightning restores the model, the optimizer and the loop counters from a checkpoint, but on its
own a resumed epoch starts its data loader again from the first batch, in a new random order
(the shuffling seed comes from the global random state, which checkpoints do not hold).
:class:`DeterministicDataOrder` makes the order a function of ``(seed, epoch)`` and skips the
batches the interrupted run had already trained on (by index, without loading them), and seeds
the global random state from ``(seed, step)`` before every step (dropout, sampled negatives).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

log = logging.getLogger(__name__)


def derived_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from ``seed`` and integer ``keys`` (NumPy's ``SeedSequence``).

    Example:
        >>> derived_seed(0, 1, 2) == derived_seed(0, 1, 2) != derived_seed(0, 2, 1)
        True
    """
    entropy = [int(seed) & 0xFFFFFFFF, *(int(key) & 0xFFFFFFFF for key in keys)]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class SkippingBatchSampler(Sampler[list[int]]):
    """The batches of ``batch_sampler``; its next iteration skips the first ``skip`` batches.

    ``len()`` stays the full epoch length (the loop counts the skipped batches as done), and
    ``set_epoch`` reaches the wrapped batch sampler and its sampler.

    Example:
        >>> from torch.utils.data import BatchSampler, SequentialSampler
        >>> sampler = SkippingBatchSampler(BatchSampler(SequentialSampler(range(6)), 2, False), 2)
        >>> list(sampler), list(sampler), len(sampler)
        ([[4, 5]], [[0, 1], [2, 3], [4, 5]], 3)
    """

    def __init__(self, batch_sampler: Any, skip: int = 0) -> None:
        self.batch_sampler = batch_sampler
        self.skip = int(skip)

    @property
    def sampler(self) -> Any:
        """The wrapped batch sampler's sampler (Lightning calls its ``set_epoch``)."""
        return getattr(self.batch_sampler, "sampler", None)

    def set_epoch(self, epoch: int) -> None:
        """Forward ``set_epoch`` to the wrapped batch sampler and its sampler."""
        for part in (self.batch_sampler, self.sampler):
            if callable(getattr(part, "set_epoch", None)):
                part.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        batches = iter(self.batch_sampler)
        for _ in range(skip):
            if next(batches, None) is None:
                return
        yield from batches


def _rebuilt(loader: DataLoader, batch_sampler: Sampler) -> DataLoader:
    """``loader`` with another batch sampler (every other setting kept).

    A subclass that takes ``DataLoader``'s own arguments (it does not override ``__init__``) is
    rebuilt as the same class, so what it adds survives: the image datamodules' loader warns
    about unreadable files at the end of every pass. Others become a plain ``DataLoader``.
    """
    kwargs: dict[str, Any] = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "persistent_workers": loader.persistent_workers,
        "pin_memory_device": loader.pin_memory_device,
    }
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    loader_class = type(loader) if type(loader).__init__ is DataLoader.__init__ else DataLoader
    return loader_class(loader.dataset, batch_sampler=batch_sampler, **kwargs)


class DeterministicDataOrder(L.Callback):
    """Make the training order a function of ``(seed, epoch)`` and resume mid-epoch exactly.

    - Before each epoch's data loader is iterated, the global random state (torch, NumPy,
      ``random``) is seeded from ``(seed, epoch)``: a ``shuffle=True`` loader, the workers' seeds
      and any sampler drawing from the global state give the same order whenever the epoch runs.
      Samplers with ``set_epoch`` (``DistributedSampler``, P×K samplers) get the epoch before
      the first batch is drawn, also on resume.
    - On resume from a mid-epoch checkpoint, the loader skips the batches the interrupted run had
      completed (at the sampler, without loading them).
    - Before every training step the global state is seeded from ``(seed, step)``.

    One process only (under DDP, Lightning replaces the sampler, and this callback does
    nothing). The order is exact for data without random augmentation; with augmentations in
    worker processes, the resumed epoch's augmentation draws may differ.

    Args:
        seed: the run's seed.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self._active = False
        self._resumed = False

    def _seed_global(self, *keys: int) -> None:
        value = derived_seed(self.seed, *keys)
        torch.manual_seed(value)
        np.random.seed(value % 2**32)  # noqa: NPY002 - the global state is what we reseed
        random.seed(value)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if stage != "fit" or self._active or datamodule is None or trainer.world_size > 1:
            return
        original = datamodule.train_dataloader

        def train_dataloader() -> Any:
            return self._wrap(trainer, original())

        datamodule.train_dataloader = train_dataloader
        self._active = True

    def _wrap(self, trainer: L.Trainer, loader: Any) -> Any:
        if not isinstance(loader, DataLoader) or loader.batch_sampler is None:
            log.warning(
                "DeterministicDataOrder: the training loader has no batch sampler; a mid-epoch "
                "resume restarts its epoch"
            )
            return loader
        fit_loop = trainer.fit_loop
        epoch = fit_loop.epoch_progress.current.processed
        done = fit_loop.epoch_loop.batch_progress.current.processed if fit_loop.restarting else 0
        if done >= len(loader.batch_sampler):
            done = 0
        batch_sampler = SkippingBatchSampler(loader.batch_sampler, skip=done)
        batch_sampler.set_epoch(epoch)
        self._seed_global(0, epoch)
        if done:
            log.info("resuming epoch %d after its first %d batches", epoch, done)
        return _rebuilt(loader, batch_sampler)

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._resumed = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning builds the training loader (and draws its first batch) while it configures
        # the optimizers, before it restores the loop counters from the checkpoint: build it
        # again now that the resumed epoch and its completed batches are known.
        fit_loop = trainer.fit_loop
        if not (self._active and self._resumed and fit_loop.restarting):
            return
        self._resumed = False
        if fit_loop._data_fetcher is not None:
            fit_loop._data_fetcher.teardown()
        fit_loop._combined_loader = None
        fit_loop.setup_data()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._active:
            self._seed_global(0, trainer.current_epoch)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._active:
            self._seed_global(1, trainer.global_step)
