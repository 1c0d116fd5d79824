"""DigitsDataModule: the open-set split against scikit-learn's own load_digits."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from marginkit.data import DigitsDataModule


@pytest.fixture(scope="module")
def datamodule() -> DigitsDataModule:
    dm = DigitsDataModule()
    dm.setup("fit")
    return dm


def test_open_set_split(datamodule):
    _, digits = load_digits(return_X_y=True)
    n_train = sum((digits == d).sum() for d in range(6))
    n_eval = sum((digits == d).sum() for d in range(6, 10))
    assert len(datamodule.train_set) == n_train
    assert len(datamodule.val_set) + len(datamodule.test_set) == n_eval
    assert set(datamodule.train_set.tensors[1].tolist()) == set(range(6))
    assert set(datamodule.val_set.tensors[1].tolist()) == {6, 7, 8, 9}
    assert set(datamodule.test_set.tensors[1].tolist()) == {6, 7, 8, 9}
    # Validation and test images are disjoint (compare raw rows).
    val_rows = {tuple(r.tolist()) for r in datamodule.val_set.tensors[0]}
    test_rows = {tuple(r.tolist()) for r in datamodule.test_set.tensors[0]}
    assert len(val_rows & test_rows) <= 2  # the digits set holds a couple of duplicate images
    for digit in range(6, 10):
        n_val = int((datamodule.val_set.tensors[1] == digit).sum())
        n_total = int((digits == digit).sum())
        assert n_val == round(0.5 * n_total)


def test_standardised_with_training_statistics(datamodule):
    images, digits = load_digits(return_X_y=True)
    train = torch.as_tensor(images[digits < 6], dtype=torch.float32) / 16
    mean, std = train.mean(0), train.std(0).clamp(min=1e-2)
    torch.testing.assert_close(datamodule.train_set.tensors[0], (train - mean) / std)


def test_labels_remapped_to_contiguous_ids():
    dm = DigitsDataModule(train_classes=[3, 7, 9], eval_classes=[0, 1])
    dm.setup()
    _, digits = load_digits(return_X_y=True)
    expected = torch.as_tensor(digits[(digits == 3) | (digits == 7) | (digits == 9)])
    expected = torch.tensor([{3: 0, 7: 1, 9: 2}[int(d)] for d in expected])
    assert torch.equal(dm.train_set.tensors[1], expected)
    assert dm.num_classes == 3


def test_loaders(datamodule):
    x, y = next(iter(datamodule.train_dataloader()))
    assert x.shape == (64, 64) and y.shape == (64,)
    assert sum(len(b[1]) for b in datamodule.val_dataloader()) == len(datamodule.val_set)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"train_classes": [0, 1], "eval_classes": [1, 2]}, "unseen in training"),
        ({"train_classes": [0, 10]}, r"distinct digits in \[0, 9\]"),
        ({"train_classes": []}, "non-empty"),
        ({"val_fraction": 1.0}, "`val_fraction`"),
        ({"batch_size": 0}, "`batch_size` must be positive"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)
