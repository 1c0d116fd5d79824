"""scikit-learn's bundled handwritten digits as an open-set retrieval benchmark."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


def _check_classes(name: str, classes: Sequence[int]) -> tuple[int, ...]:
    classes = tuple(classes)
    if not classes or any(isinstance(c, bool) or not isinstance(c, int) for c in classes):
        raise ValueError(f"`{name}` must be a non-empty list of digit ids, got {list(classes)}")
    if any(c < 0 or c > 9 for c in classes) or len(set(classes)) != len(classes):
        raise ValueError(f"`{name}` must hold distinct digits in [0, 9], got {list(classes)}")
    return classes


class DigitsDataModule(L.LightningDataModule):
    """Open-set split of ``sklearn.datasets.load_digits`` (1,797 8×8 images, no download).

    Training uses the images of ``train_classes`` (labels remapped to ``0..len-1``); validation
    and test retrieve among the images of the unseen ``eval_classes``, split in two disjoint,
    class-stratified halves (``val_fraction`` of each class goes to validation), so the model is
    selected on different images than it is tested on. Retrieval is leave-one-out: every
    evaluation image queries all other images of its split.

    Pixels (0–16) are divided by 16 and standardised with the training split's per-pixel mean
    and standard deviation.

    Args:
        train_classes: digits to train on. Default 0–5.
        eval_classes: unseen digits to validate and test on. Default 6–9.
        val_fraction: fraction of each evaluation class used for validation, in (0, 1).
        batch_size: training batch size.
        eval_batch_size: evaluation batch size.
        num_workers: DataLoader workers (0 is fastest for this in-memory data).
        seed: seed of the validation/test split.

    Example:
        >>> dm = DigitsDataModule()
        >>> dm.setup("fit")
        >>> dm.num_classes, dm.input_dim
        (6, 64)
    """

    def __init__(
        self,
        train_classes: Sequence[int] = (0, 1, 2, 3, 4, 5),
        eval_classes: Sequence[int] = (6, 7, 8, 9),
        val_fraction: float = 0.5,
        batch_size: int = 64,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.train_classes = _check_classes("train_classes", train_classes)
        self.eval_classes = _check_classes("eval_classes", eval_classes)
        overlap = sorted(set(self.train_classes) & set(self.eval_classes))
        if overlap:
            raise ValueError(
                f"`eval_classes` must be unseen in training (open-set), but {overlap} are also "
                "in `train_classes`"
            )
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"`val_fraction` must be in (0, 1), got {val_fraction}")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value <= 0:
                raise ValueError(f"`{name}` must be positive, got {value}")
        if num_workers < 0:
            raise ValueError(f"`num_workers` must be >= 0, got {num_workers}")
        self.val_fraction = float(val_fraction)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.input_dim = 64
        self.num_classes = len(self.train_classes)
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Load the digits once and build the three splits."""
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits

        images, digits = load_digits(return_X_y=True)
        images = torch.as_tensor(images, dtype=torch.float32) / 16.0
        digits = torch.as_tensor(digits, dtype=torch.long)

        train_mask = torch.isin(digits, torch.tensor(self.train_classes))
        train_x = images[train_mask]
        mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-2)
        normalise = lambda x: (x - mean) / std  # noqa: E731
        remap = torch.full((10,), -1, dtype=torch.long)
        remap[torch.tensor(self.train_classes)] = torch.arange(self.num_classes)
        self.train_set = TensorDataset(normalise(train_x), remap[digits[train_mask]])

        generator = torch.Generator().manual_seed(self.seed)
        val_idx, test_idx = [], []
        for digit in self.eval_classes:
            idx = (digits == digit).nonzero()[:, 0]
            idx = idx[torch.randperm(len(idx), generator=generator)]
            n_val = round(self.val_fraction * len(idx))
            val_idx.append(idx[:n_val])
            test_idx.append(idx[n_val:])
        val_idx, test_idx = torch.cat(val_idx).sort().values, torch.cat(test_idx).sort().values
        # Evaluation labels keep the original digit ids (they are never fed to a head).
        self.val_set = TensorDataset(normalise(images[val_idx]), digits[val_idx])
        self.test_set = TensorDataset(normalise(images[test_idx]), digits[test_idx])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set, batch_size=self.eval_batch_size, num_workers=self.num_workers
        )

    def test_dataloader(self) -> DataLoader:
        return DataLoader(
            self.test_set, batch_size=self.eval_batch_size, num_workers=self.num_workers
        )
