"""The contract every marginkit DataModule keeps with :class:`~marginkit.EmbeddingModule` and the CLI.

:class:`EmbeddingDataModule` holds the loader logic shared by the digits, synthetic and image
datamodules; a subclass only builds its splits in :meth:`EmbeddingDataModule._build`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from marginkit._validation import check_fraction as _check_fraction  # noqa: F401 (data modules)
from marginkit._validation import check_int_at_least as _check_int
from marginkit._validation import check_stage
from marginkit.data.pairs import VerificationPairs, sample_pairs
from marginkit.data.samplers import BalancedBatchSampler

STAGES = ("train", "val", "test")
EVAL_STAGES = ("val", "test")
# The raw-input baseline is skipped (None) above this many bytes of float32 features.
BASELINE_MAX_BYTES = 1 << 30


def config_key(name: str) -> str:
    """``name`` as the CLI spells a datamodule argument (``data.<name>``), in backticks.

    Setup errors name the key a user sets (``data.batch_size=32`` on the command line, or the
    constructor argument of the same name).

    Example:
        >>> config_key("val_ratio")
        '`data.val_ratio`'
    """
    return f"`data.{name}`"


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``count`` and ``noun``, in the plural unless ``count`` is 1.

    Example:
        >>> plural(1, "class", "classes"), plural(3, "image")
        ('1 class', '3 images')
    """
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"


class TrainingEpoch(NamedTuple):
    """What one training epoch is made of, per rank (see :meth:`EmbeddingDataModule.training_epoch`).

    Attributes:
        n_batches: batches each rank trains on.
        batch_size: items per batch (P·K for P×K batches).
        n_instances: K of P×K batches, or None for plain shuffled batches.
        n_dropped: items no rank sees in an epoch (plain batches: the remainder of the last
            batch; None for P×K batches, whose padding and leftover chunks vary by epoch).
        world_size: number of ranks.
    """

    n_batches: int
    batch_size: int
    n_instances: int | None
    n_dropped: int | None
    world_size: int

    def describe(self) -> str:
        """E.g. ``1 batch of 128 (113 dropped each epoch)`` or ``5 batches of 8 classes × 4``."""
        if self.n_instances is None:
            text = f"{plural(self.n_batches, 'batch', 'batches')} of {self.batch_size}"
        else:
            n_labels = self.batch_size // self.n_instances
            text = (
                f"{plural(self.n_batches, 'batch', 'batches')} of "
                f"{n_labels} classes × {self.n_instances}"
            )
        if self.world_size > 1:
            text += f" on each of {self.world_size} ranks"
        if self.n_dropped:
            text += f" ({self.n_dropped} dropped each epoch)"
        return text


class _FlatBatchSampler(DistributedSampler):
    """A P×K batch sampler's batches, laid end to end, for ``DataLoader(sampler=…, batch_size=P·K)``.

    With ``drop_last=True`` every batch of :class:`BalancedBatchSampler` holds exactly P·K items,
    so the DataLoader cuts this stream back into the same batches. It is a
    :class:`~torch.utils.data.DistributedSampler` (already split by rank) so that Lightning
    neither replaces it under DDP (it would fail to inject a sampler into a custom batch sampler)
    and calls its :meth:`set_epoch` at the start of every epoch (Lightning only reaches
    ``loader.sampler`` and ``loader.batch_sampler.sampler``, never ``loader.batch_sampler``).
    """

    def __init__(self, batch_sampler: BalancedBatchSampler) -> None:  # no super(): no dataset
        self.batch_sampler = batch_sampler
        self.num_replicas = batch_sampler.num_replicas
        self.rank = batch_sampler.rank
        self.epoch = batch_sampler.epoch
        self.shuffle = True
        self.drop_last = True
        self.seed = batch_sampler.seed

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.batch_sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        for batch in self.batch_sampler:
            yield from batch

    def __len__(self) -> int:
        return len(self.batch_sampler) * self.batch_sampler.batch_size


class EmbeddingDataModule(L.LightningDataModule):
    """Train / val / test splits for metric learning, with what evaluation needs beside batches.

    The contract (every marginkit datamodule):

    - **Training classes.** :attr:`num_classes` (how many classes the head sees) and
      :attr:`train_labels` (the (N,) int64 labels of the training split, in dataset order) are
      known after ``setup("fit")``; reading them earlier raises ``RuntimeError``.
    - **Batches.** Training batches are ``(inputs, labels)``, shuffled in an order that depends
      only on ``(seed, epoch)``; with ``n_instances=K`` each batch holds ``batch_size // K``
      classes × K items (a :class:`~marginkit.data.samplers.BalancedBatchSampler`). Lightning's
      ``set_epoch`` reshuffles every epoch; under DDP the samplers split the data by rank
      themselves (see :meth:`train_dataloader`). Validation and test
      batches are ``(inputs, labels, indices)``, ``indices`` the int64 positions of the items in
      the split's dataset (to drop DDP padding and to score pair lists).
    - **Pairs.** :meth:`verification_pairs` gives the verification pairs of an evaluation split
      as indices, in protocol order (a pair file's, or a seeded balanced list).
    - **Raw-input baseline.** :meth:`baseline_features` gives the inputs of an evaluation split
      as (N, F) float vectors, to compare the model's metrics with those of the raw inputs.
    - **Checked before the first step.** ``setup("fit")`` refuses, with a ``ValueError``
      naming the config key (``data.<argument>``), a training split that fills no batch (on
      every rank, P×K batches included) and a val or test split of fewer than 2 classes (where
      every retrieval and verification metric is trivially perfect or undefined).
    - **Summary.** :meth:`summary` describes the built splits in one line (classes and items,
      the batches of a training epoch, what was left out); it is logged (rank zero, INFO) the
      first time Lightning asks for a loader.

    Subclasses implement :meth:`_build` (fill :attr:`datasets` and, for ``"train"``,
    :attr:`_train_labels` and :attr:`_num_classes`) and may override :meth:`_seeded_pairs`,
    :meth:`_raw_features`, :attr:`collate_fn`, :meth:`_too_few_classes` (the error naming what
    sets an evaluation split's classes), :meth:`_split_note` and :meth:`_summary_notes`.

    Args:
        batch_size: training batch size (P·K with ``n_instances``).
        eval_batch_size: evaluation batch size; the metrics do not depend on it.
        num_workers: DataLoader worker processes.
        pin_memory: pin batches in page-locked memory (faster host-to-GPU copies).
        persistent_workers: keep workers alive between epochs (only with ``num_workers > 0``).
        n_instances: K items per class in each training batch, or None for plain shuffling.
            ``batch_size`` must be a multiple of it.
        n_folds: folds of the verification accuracy protocol of the seeded pair lists.
        pairs_per_fold: the most same (and different) pairs per fold of the seeded pair lists.
        seed: seed of the splits, the P×K sampler and the pair lists.
    """

    #: The ``collate_fn`` of every loader (None: PyTorch's default).
    collate_fn: Callable[[list[Any]], Any] | None = None
    #: What the summary and the errors call one item of a split.
    item_noun: str = "item"

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        n_instances: int | None = None,
        n_folds: int = 10,
        pairs_per_fold: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.eval_batch_size = _check_int("eval_batch_size", eval_batch_size, 1)
        self.num_workers = _check_int("num_workers", num_workers, 0)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and num_workers > 0
        if n_instances is not None:
            _check_int("n_instances", n_instances, 1)
            if batch_size % n_instances:
                raise ValueError(
                    f"`batch_size` ({batch_size}) must be a multiple of `n_instances` "
                    f"({n_instances}): a P×K batch holds batch_size // n_instances classes"
                )
        self.n_instances = n_instances
        self.n_folds = _check_int("n_folds", n_folds, 2)
        self.pairs_per_fold = _check_int("pairs_per_fold", pairs_per_fold, 1)
        self.seed = _check_int("seed", seed, 0)
        self.datasets: dict[str, Dataset] = {}
        self._num_classes: int | None = None
        self._train_labels: Tensor | None = None
        self._pairs: dict[str, VerificationPairs | None] = {}
        self._summarized: set[str] = set()

    # ----------------------------------------------------------------- what subclasses provide
    def _build(self, stage: str) -> None:
        """Create ``self.datasets[stage]`` (``"train"``, ``"val"`` or ``"test"``)."""
        raise NotImplementedError

    def labels(self, stage: str) -> Tensor:
        """The (N,) int64 labels of split ``stage`` (``"train"``, ``"val"``, ``"test"``), in order."""
        raise NotImplementedError

    def _seeded_pairs(self, stage: str) -> VerificationPairs | None:
        return sample_pairs(self.labels(stage), self.n_folds, self.pairs_per_fold, self.seed)

    def _raw_features(self, stage: str) -> Tensor | None:
        raise NotImplementedError

    def _too_few_classes(self, stage: str, n_classes: int) -> str:
        """The error message for evaluation split ``stage`` holding ``n_classes`` < 2 classes.

        Subclasses name the config key that sets the split's classes.
        """
        return (
            f"the {stage} split has {plural(n_classes, 'class', 'classes')}: retrieval and "
            "verification need at least 2"
        )

    def _split_note(self, stage: str) -> str:
        """Text appended to split ``stage``'s part of :meth:`summary` (e.g. its pair file)."""
        return ""

    def _summary_notes(self) -> list[str]:
        """What :meth:`summary` ends with: what was left out (e.g. ``1 empty folder``)."""
        return []

    # ----------------------------------------------------------------------------- contract
    def setup(self, stage: str | None = None) -> None:
        """Build the splits a Lightning stage needs, and check they can give meaningful results.

        ``fit`` builds all three splits (train, val and test: a test split that cannot be built
        or scored fails before training, not after it), ``validate`` the val split, ``test``
        and ``predict`` the test split; None all three. Before training (``fit`` or None) the
        val and test splits must hold at least 2 classes and the training split must fill at
        least one batch on every rank (:meth:`training_epoch`); otherwise ``ValueError`` names
        the config key to change. (An evaluation-only stage builds what it is given: embedding
        a one-class folder is legitimate.) Splits are built once; the checks run on every call
        (Lightning's own ``setup`` call knows the number of ranks).
        """
        needed = {
            "fit": STAGES,
            "validate": ("val",),
            "test": ("test",),
            "predict": ("test",),
        }.get(stage, STAGES)  # type: ignore[arg-type]
        for split in needed:
            if split not in self.datasets:
                self._build(split)
        if "train" not in needed:
            return
        for split in EVAL_STAGES:
            n_classes = int(self.labels(split).unique().numel())
            if n_classes < 2:
                raise ValueError(self._too_few_classes(split, n_classes))
        self.training_epoch()

    def training_epoch(self) -> TrainingEpoch:
        """The batches of one training epoch on each rank (after ``setup("fit")``).

        Plain batches: each rank's ``⌊N / W⌋`` items (``N`` training items, ``W`` ranks) cut into
        ``⌊N / W⌋ // batch_size`` batches, the remaining items dropped. P×K batches: the length
        of the :class:`~marginkit.data.samplers.BalancedBatchSampler` on this rank.

        Raises:
            ValueError: no batch at all (``batch_size`` larger than the split, or than each
                rank's share of it; P×K batches asking for more classes than the split has, or
                for a K larger than its largest class). The message names the config key.
        """
        n_items = len(self._dataset("train"))  # type: ignore[arg-type]
        world_size, rank = self._distributed_layout()
        noun = self.item_noun
        if self.n_instances is None:
            n_local = n_items // world_size
            n_batches = n_local // self.batch_size
            if n_batches == 0:
                share = (
                    f"the training split ({plural(n_items, noun)})"
                    if world_size == 1
                    else f"each of the {world_size} ranks' share of the training split "
                    f"({n_local} of {plural(n_items, noun)})"
                )
                raise ValueError(
                    f"{config_key('batch_size')} ({self.batch_size}) is larger than {share}: "
                    "lower it"
                )
            n_dropped = n_items - n_batches * self.batch_size * world_size
            return TrainingEpoch(n_batches, self.batch_size, None, n_dropped, world_size)
        sampler = self._balanced_sampler(world_size, rank)
        if len(sampler) == 0:
            raise ValueError(
                f"{config_key('batch_size')} ({self.batch_size}) leaves no P×K batch of the "
                f"training split for each of the {world_size} ranks: lower it"
            )
        return TrainingEpoch(len(sampler), self.batch_size, self.n_instances, None, world_size)

    def _balanced_sampler(self, num_replicas: int, rank: int) -> BalancedBatchSampler:
        """The P×K batch sampler of the training split; ``ValueError`` naming the config keys."""
        n_instances = int(self.n_instances)  # type: ignore[arg-type]
        n_labels = self.batch_size // n_instances
        sizes = torch.bincount(self.train_labels)
        sizes = sizes[sizes > 0]
        if len(sizes) < n_labels:
            raise ValueError(
                f"{config_key('batch_size')} ({self.batch_size}) asks for P×K batches of "
                f"{n_labels} classes × {n_instances} ({config_key('n_instances')}), the training "
                f"split has {plural(len(sizes), 'class', 'classes')}: lower it"
            )
        if int(sizes.max()) < n_instances:
            raise ValueError(
                f"{config_key('n_instances')} ({n_instances}) is larger than the training "
                f"split's largest class ({plural(int(sizes.max()), self.item_noun)}): lower it"
            )
        return BalancedBatchSampler(
            self.train_labels,
            n_labels=n_labels,
            n_instances=n_instances,
            drop_last=True,
            seed=self.seed,
            num_replicas=num_replicas,
            rank=rank,
        )

    def summary(self) -> str:
        """One line on the built splits: classes and items, a training epoch, what was left out.

        E.g. ``train 24 classes / 241 images -> 1 batch of 128 (113 dropped each epoch), val 3
        classes / 30 images, test 3 classes / 30 images, 1 unreadable image, 1 empty folder``
        (:meth:`training_epoch` per rank under DDP; what is left out comes from the subclass).

        Example:
            >>> from marginkit.data import SyntheticDataModule
            >>> dm = SyntheticDataModule(num_classes=4, num_eval_classes=2, samples_per_class=6,
            ...                          dim=8, batch_size=10)
            >>> dm.setup("fit")
            >>> dm.summary()
            'train 4 classes / 24 items -> 2 batches of 10 (4 dropped each epoch), val 2 classes / 6 items, test 2 classes / 6 items'
        """
        parts = []
        for split in STAGES:
            if split not in self.datasets:
                continue
            labels = self.labels(split)
            classes = plural(int(labels.unique().numel()), "class", "classes")
            part = f"{split} {classes} / {plural(len(labels), self.item_noun)}"
            if split == "train":
                part += f" -> {self.training_epoch().describe()}"
            parts.append(part + self._split_note(split))
        return ", ".join(parts + self._summary_notes())

    def _announce(self) -> None:
        """Log :meth:`summary` (rank zero, INFO) when splits were built since it was last logged."""
        if set(self.datasets) <= self._summarized:
            return
        self._summarized |= set(self.datasets)
        rank_zero_info(self.summary())

    def _dataset(self, stage: str) -> Dataset:
        if stage not in self.datasets:
            lightning_stage = "fit" if stage in ("train", "val") else "test"
            raise RuntimeError(
                f"the {stage} split is not built yet: call `setup({lightning_stage!r})` first"
            )
        return self.datasets[stage]

    @property
    def num_classes(self) -> int:
        """Number of training classes (the head's ``num_classes``); known after ``setup("fit")``."""
        if self._num_classes is None:
            raise RuntimeError(
                f"{type(self).__name__}.num_classes is known after the training split is built: "
                "call `setup('fit')` first"
            )
        return self._num_classes

    @property
    def train_labels(self) -> Tensor:
        """The (N,) int64 labels of the training split (for a P×K sampler), after ``setup``."""
        if self._train_labels is None:
            raise RuntimeError(
                f"{type(self).__name__}.train_labels is known after the training split is "
                "built: call `setup('fit')` first"
            )
        return self._train_labels

    def verification_pairs(self, stage: str) -> VerificationPairs | None:
        """The verification pairs of evaluation split ``stage`` (``"val"``/``"test"``), or None.

        Indices into the split's dataset, in protocol order; computed once and cached.
        """
        stage = check_stage(stage)
        self._dataset(stage)
        if stage not in self._pairs:
            self._pairs[stage] = self._seeded_pairs(stage)
        return self._pairs[stage]

    def baseline_features(self, stage: str) -> Tensor | None:
        """The raw inputs of evaluation split ``stage`` as (N, F) float32 vectors, in order.

        What the raw-input baseline retrieves with (the same metrics as the model, on the inputs
        instead of the embeddings). None when the datamodule cannot give them (e.g. more than
        1 GiB of features).
        """
        stage = check_stage(stage)
        self._dataset(stage)
        return self._raw_features(stage)

    # ------------------------------------------------------------------------------ loaders
    def _loader_kwargs(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.persistent_workers,
            "collate_fn": type(self).collate_fn,
        }

    def _make_loader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        return DataLoader(dataset, **kwargs, **self._loader_kwargs())

    def _distributed_layout(self) -> tuple[int, int]:
        """(world size, rank): the trainer's, else an initialised process group's, else (1, 0)."""
        if self.trainer is not None:
            return int(self.trainer.world_size), int(self.trainer.global_rank)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches: plain (last short batch dropped) or P×K.

        Either way the order is a function of ``(seed, epoch)`` only (Lightning calls the
        sampler's ``set_epoch`` at the start of every epoch), so a run is reproducible and a
        resumed epoch replays the same batches; under DDP the sampler is already split by rank
        (a :class:`~torch.utils.data.DistributedSampler`, which Lightning leaves as it is).
        """
        dataset = self._dataset("train")
        self._announce()
        num_replicas, rank = self._distributed_layout()
        if self.n_instances is None:
            sampler: DistributedSampler = DistributedSampler(
                dataset,
                num_replicas=num_replicas,
                rank=rank,
                shuffle=True,
                seed=self.seed,
                drop_last=True,
            )
            return self._make_loader(
                dataset, sampler=sampler, batch_size=self.batch_size, drop_last=True
            )
        batch_sampler = self._balanced_sampler(num_replicas, rank)
        return self._make_loader(
            dataset,
            sampler=_FlatBatchSampler(batch_sampler),
            batch_size=batch_sampler.batch_size,
            drop_last=True,
        )

    def val_dataloader(self) -> DataLoader:
        """Validation batches ``(inputs, labels, indices)`` in dataset order."""
        dataset = self._dataset("val")
        self._announce()
        return self._make_loader(dataset, batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        """Test batches ``(inputs, labels, indices)`` in dataset order."""
        dataset = self._dataset("test")
        self._announce()
        return self._make_loader(dataset, batch_size=self.eval_batch_size)


# The parameters of EmbeddingDataModule's constructor, which every subclass repeats and passes on.
_BASE_PARAMETERS = tuple(inspect.signature(EmbeddingDataModule.__init__).parameters)[1:]


def _base_arguments(arguments: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """The :class:`EmbeddingDataModule` arguments among a subclass constructor's ``locals()``.

    A subclass keeps the base's parameters in its own signature (what its config lists, with
    its own defaults) and passes them on with ``super().__init__(**_base_arguments(locals()))``;
    ``overrides`` replace the values of some of them.
    """
    return {name: arguments[name] for name in _BASE_PARAMETERS} | overrides


def fits_baseline_budget(n_items: int, n_features: int) -> bool:
    """Whether (n_items, n_features) float32 features stay under :data:`BASELINE_MAX_BYTES`."""
    return 4 * n_items * n_features <= BASELINE_MAX_BYTES
