"""Class-clustered vectors or small images, generated on the fly: smoke tests and benchmarks."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset

from marginkit._validation import check_finite_number
from marginkit.data.base import (
    EmbeddingDataModule,
    _base_arguments,
    _check_fraction,
    _check_int,
    fits_baseline_budget,
)

# Side of the random pattern an image class centre is upsampled from (smooth, class-specific).
_PATTERN_SIDE = 4


class SyntheticDataset(Dataset):
    r"""Item ``i`` is ``centre(c_i) + noise · ε_i``, generated when it is read.

    ``centre(c)`` is drawn from :math:`\mathcal N(0, I)` with the seed ``(seed, c)`` (for images:
    a :math:`4\times4` pattern per channel, bilinearly upsampled to ``shape``), ``ε_i`` from
    :math:`\mathcal N(0, I)` with the seed ``(seed, c_i, k_i)``, ``k_i`` the item's number inside
    its class. Nothing is stored but the (class, number) of each item, so any size fits in memory
    and every read of an item returns the same tensor.

    Args:
        classes: (N,) class id of each item (the seed of its centre).
        numbers: (N,) number of each item inside its class (the seed of its noise).
        labels: (N,) label returned with each item.
        shape: ``(dim,)`` or ``(channels, height, width)``.
        noise: standard deviation of the noise.
        seed: seed of the centres and the noise.
        with_index: also return the item's index (evaluation splits).

    Example:
        >>> data = SyntheticDataset(torch.tensor([3, 3]), torch.tensor([0, 1]),
        ...                         torch.tensor([0, 0]), (5,), noise=0.5, seed=0)
        >>> x, label = data[1]
        >>> x.shape, int(label), bool((data[1][0] == x).all())
        (torch.Size([5]), 0, True)
    """

    def __init__(
        self,
        classes: Tensor,
        numbers: Tensor,
        labels: Tensor,
        shape: tuple[int, ...],
        noise: float,
        seed: int,
        with_index: bool = False,
    ) -> None:
        self.classes = classes
        self.numbers = numbers
        self.labels = labels
        self.shape = tuple(shape)
        self.noise = noise
        self.seed = seed
        self.with_index = with_index

    def __len__(self) -> int:
        return len(self.labels)

    def centre(self, class_id: int) -> Tensor:
        """The centre of class ``class_id`` (a tensor of :attr:`shape`)."""
        rng = np.random.default_rng([self.seed, 0, class_id])
        if len(self.shape) == 1:
            return torch.from_numpy(rng.standard_normal(self.shape, dtype=np.float32))
        channels, height, width = self.shape
        pattern = rng.standard_normal((1, channels, _PATTERN_SIDE, _PATTERN_SIDE), np.float32)
        return F.interpolate(
            torch.from_numpy(pattern), size=(height, width), mode="bilinear", align_corners=False
        )[0]

    def item(self, index: int) -> Tensor:
        """The input of item ``index``."""
        class_id, number = int(self.classes[index]), int(self.numbers[index])
        rng = np.random.default_rng([self.seed, 1, class_id, number])
        noise = torch.from_numpy(rng.standard_normal(self.shape, dtype=np.float32))
        return self.centre(class_id) + self.noise * noise

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        label = self.labels[index]
        if self.with_index:
            return self.item(index), label, torch.tensor(index)
        return self.item(index), label


class SyntheticDataModule(EmbeddingDataModule):
    """Open-set synthetic data: train on ``num_classes`` clusters, evaluate on unseen ones.

    Training classes are ``0..num_classes-1``; validation and test both hold the
    ``num_eval_classes`` unseen classes after them, split by item like the digits
    (``val_fraction`` of each class's ``samples_per_class`` items to validation, the rest to
    test). Inputs are ``dim``-vectors, or ``channels × image_size × image_size`` images when
    ``image_size`` is set (see :class:`SyntheticDataset` for how they are drawn). Everything is a
    function of ``seed``; verification uses seeded balanced pair lists. The raw-input baseline is
    the flattened inputs (None above 1 GiB).

    Args:
        num_classes: training classes (the head's ``num_classes``).
        num_eval_classes: unseen classes of the validation and test splits (>= 2).
        samples_per_class: items per class.
        dim: vector size (when ``image_size`` is None).
        image_size: side of square images, or None for vectors.
        channels: image channels.
        noise: standard deviation of the noise around each class centre (centres are N(0, I)).
        val_fraction: fraction of each evaluation class used for validation, in (0, 1).
        batch_size: training batch size.
        eval_batch_size: evaluation batch size.
        num_workers: DataLoader workers.
        pin_memory: pin batches in page-locked memory.
        persistent_workers: keep workers alive between epochs (with ``num_workers > 0``).
        n_instances: K items per class in each training batch (P×K batches), or None.
        n_folds: folds of the verification pair lists.
        pairs_per_fold: the most same (and different) pairs per fold.
        seed: seed of the centres, the noise, the sampler and the pair lists.

    Example:
        >>> dm = SyntheticDataModule(num_classes=4, num_eval_classes=2, samples_per_class=6, dim=8,
        ...                          batch_size=24)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> dm.num_classes, tuple(x.shape), len(dm.datasets["val"])
        (4, (24, 8), 6)
    """

    def __init__(
        self,
        num_classes: int = 10,
        num_eval_classes: int = 10,
        samples_per_class: int = 20,
        dim: int = 64,
        image_size: int | None = None,
        channels: int = 3,
        noise: float = 1.0,
        val_fraction: float = 0.5,
        batch_size: int = 64,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        n_instances: int | None = None,
        n_folds: int = 10,
        pairs_per_fold: int = 50,
        seed: int = 0,
    ) -> None:
        super().__init__(**_base_arguments(locals()))
        self.num_train_classes = _check_int("num_classes", num_classes, 1)
        self.num_eval_classes = _check_int("num_eval_classes", num_eval_classes, 2)
        self.samples_per_class = _check_int("samples_per_class", samples_per_class, 2)
        self.dim = _check_int("dim", dim, 1)
        if image_size is not None:
            _check_int("image_size", image_size, 1)
        self.image_size = image_size
        self.channels = _check_int("channels", channels, 1)
        self.noise = check_finite_number("noise", noise)
        if self.noise < 0:
            raise ValueError(f"`noise` must be >= 0, got {noise}")
        self.val_fraction = _check_fraction("val_fraction", val_fraction)
        self.n_val = min(max(round(val_fraction * samples_per_class), 1), samples_per_class - 1)
        if num_classes * samples_per_class < batch_size:
            raise ValueError(
                f"`batch_size` ({batch_size}) must be at most the training items "
                f"(num_classes × samples_per_class = {num_classes * samples_per_class})"
            )
        if n_instances is not None and (
            n_instances > samples_per_class or batch_size // n_instances > num_classes
        ):
            raise ValueError(
                f"P×K batches of {batch_size // n_instances} classes × {n_instances} items need "
                f"`num_classes` >= {batch_size // n_instances} and `samples_per_class` >= "
                f"{n_instances}, got {num_classes} and {samples_per_class}"
            )
        self._num_classes = num_classes

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one input: ``(dim,)`` or ``(channels, image_size, image_size)``."""
        if self.image_size is None:
            return (self.dim,)
        return (self.channels, self.image_size, self.image_size)

    @property
    def input_dim(self) -> int:
        """Number of values of one input (what an MLP's ``in_features`` must be)."""
        return int(np.prod(self.shape))

    def _build(self, stage: str) -> None:
        per_class = self.samples_per_class
        if stage == "train":
            classes = torch.arange(self.num_train_classes).repeat_interleave(per_class)
            numbers = torch.arange(per_class).repeat(self.num_train_classes)
            self._train_labels = classes
        else:
            first, last = (0, self.n_val) if stage == "val" else (self.n_val, per_class)
            eval_classes = torch.arange(self.num_eval_classes) + self.num_train_classes
            classes = eval_classes.repeat_interleave(last - first)
            numbers = torch.arange(first, last).repeat(self.num_eval_classes)
        self.datasets[stage] = SyntheticDataset(
            classes, numbers, classes, self.shape, self.noise, self.seed, stage != "train"
        )

    def labels(self, stage: str) -> Tensor:
        """The labels of split ``stage``: class ids (unseen ids after the training ones)."""
        return self._dataset(stage).labels  # type: ignore[attr-defined]

    def _raw_features(self, stage: str) -> Tensor | None:
        dataset = self._dataset(stage)
        if not fits_baseline_budget(len(dataset), self.input_dim):  # type: ignore[arg-type]
            return None
        return torch.stack([dataset.item(i).flatten() for i in range(len(dataset))])  # type: ignore[attr-defined]
