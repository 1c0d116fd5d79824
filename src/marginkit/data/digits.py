"""scikit-learn's bundled handwritten digits as an open-set retrieval benchmark."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from marginkit.data.base import (
    EmbeddingDataModule,
    _base_arguments,
    _check_fraction,
    config_key,
    plural,
)


def _check_classes(name: str, classes: Sequence[int]) -> tuple[int, ...]:
    classes = tuple(classes)
    if not classes or any(isinstance(c, bool) or not isinstance(c, int) for c in classes):
        raise ValueError(f"`{name}` must be a non-empty list of digit ids, got {list(classes)}")
    if any(c < 0 or c > 9 for c in classes) or len(set(classes)) != len(classes):
        raise ValueError(f"`{name}` must hold distinct digits in [0, 9], got {list(classes)}")
    return classes


class DigitsDataModule(EmbeddingDataModule):
    """Open-set split of ``sklearn.datasets.load_digits`` (1,797 8×8 images, no download).

    Training uses the images of ``train_classes`` (labels remapped to ``0..len-1``); validation
    and test retrieve among the images of the unseen ``eval_classes``, split in two disjoint,
    class-stratified halves (``val_fraction`` of each class goes to validation), so the model is
    selected on different images than it is tested on. Retrieval is leave-one-out: every
    evaluation image queries all other images of its split. Verification uses a fixed, seeded,
    balanced pair list of each evaluation split (:func:`~marginkit.data.sample_pairs`:
    ``n_folds`` folds of ``pairs_per_fold`` same then as many different pairs).

    Pixels (0–16) are divided by 16 and standardised with the training split's per-pixel mean
    and standard deviation; inputs are (N, 64) vectors (reshape to (N, 1, 8, 8) for a CNN:
    :class:`~marginkit.models.backbones.SmallCNN` does it). The raw-input baseline
    (:meth:`baseline_features`) is these standardised pixels.

    Args:
        train_classes: digits to train on. Default 0–5.
        eval_classes: unseen digits to validate and test on. Default 6–9.
        val_fraction: fraction of each evaluation class used for validation, in (0, 1).
        batch_size: training batch size.
        eval_batch_size: evaluation batch size.
        num_workers: DataLoader workers (0 is fastest for this in-memory data).
        pin_memory: pin batches in page-locked memory.
        persistent_workers: keep workers alive between epochs (with ``num_workers > 0``).
        n_instances: K items per class in each training batch (P×K batches), or None.
        n_folds: folds of the verification pair lists.
        pairs_per_fold: same (and different) pairs per fold.
        seed: seed of the validation/test split, the P×K sampler and the pair lists.

    Example:
        >>> dm = DigitsDataModule()
        >>> dm.setup("fit")
        >>> dm.num_classes, dm.input_dim, len(dm.verification_pairs("val").issame)
        (6, 64, 2000)
    """

    def __init__(
        self,
        train_classes: Sequence[int] = (0, 1, 2, 3, 4, 5),
        eval_classes: Sequence[int] = (6, 7, 8, 9),
        val_fraction: float = 0.5,
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
        super().__init__(**_base_arguments(locals()))
        self.train_classes = _check_classes("train_classes", train_classes)
        self.eval_classes = _check_classes("eval_classes", eval_classes)
        overlap = sorted(set(self.train_classes) & set(self.eval_classes))
        if overlap:
            raise ValueError(
                f"`eval_classes` must be unseen in training (open-set), but {overlap} are also "
                "in `train_classes`"
            )
        self.val_fraction = _check_fraction("val_fraction", val_fraction)
        if n_instances is not None and len(self.train_classes) < batch_size // n_instances:
            raise ValueError(
                f"`batch_size // n_instances` ({batch_size // n_instances} classes per batch) "
                f"must be at most the number of `train_classes` ({len(self.train_classes)})"
            )
        self.input_dim = 64
        self._num_classes = len(self.train_classes)  # known without loading anything

    item_noun = "image"

    @property
    def train_set(self) -> TensorDataset | None:
        """``(pixels, labels)`` of the training digits, after ``setup``."""
        return self.datasets.get("train")  # type: ignore[return-value]

    @property
    def val_set(self) -> TensorDataset | None:
        """``(pixels, digits, indices)`` of the validation half, after ``setup``."""
        return self.datasets.get("val")  # type: ignore[return-value]

    @property
    def test_set(self) -> TensorDataset | None:
        """``(pixels, digits, indices)`` of the test half, after ``setup``."""
        return self.datasets.get("test")  # type: ignore[return-value]

    def _build(self, stage: str) -> None:
        if self.datasets:  # the three splits are built together (the data is tiny)
            return
        from sklearn.datasets import load_digits

        images, digits = load_digits(return_X_y=True)
        images = torch.as_tensor(images, dtype=torch.float32) / 16.0
        digits = torch.as_tensor(digits, dtype=torch.long)

        train_mask = torch.isin(digits, torch.tensor(self.train_classes))
        train_x = images[train_mask]
        mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-2)
        remap = torch.full((10,), -1, dtype=torch.long)
        remap[torch.tensor(self.train_classes)] = torch.arange(len(self.train_classes))
        self._train_labels = remap[digits[train_mask]]
        self.datasets["train"] = TensorDataset((train_x - mean) / std, self._train_labels)

        generator = torch.Generator().manual_seed(self.seed)
        val_idx, test_idx = [], []
        for digit in self.eval_classes:
            idx = (digits == digit).nonzero()[:, 0]
            idx = idx[torch.randperm(len(idx), generator=generator)]
            n_val = round(self.val_fraction * len(idx))
            val_idx.append(idx[:n_val])
            test_idx.append(idx[n_val:])
        for split, idx in (("val", val_idx), ("test", test_idx)):
            idx = torch.cat(idx).sort().values
            # Evaluation labels keep the original digit ids (they are never fed to a head).
            pixels = (images[idx] - mean) / std
            self.datasets[split] = TensorDataset(pixels, digits[idx], torch.arange(len(idx)))

    def _too_few_classes(self, stage: str, n_classes: int) -> str:
        if len(self.eval_classes) < 2:
            key, value, fix = "eval_classes", list(self.eval_classes), "list 2 or more digits"
        else:
            key, value, fix = "val_fraction", self.val_fraction, "move it away from 0 and 1"
        return (
            f"{config_key(key)} ({value}) leaves the {stage} split "
            f"{plural(n_classes, 'class', 'classes')}: retrieval and verification need at "
            f"least 2; {fix}"
        )

    def labels(self, stage: str) -> Tensor:
        """The labels of split ``stage``: remapped ids for ``"train"``, digit ids otherwise."""
        return self._dataset(stage).tensors[1]  # type: ignore[attr-defined]

    def _raw_features(self, stage: str) -> Tensor:
        return self._dataset(stage).tensors[0]  # type: ignore[attr-defined]
