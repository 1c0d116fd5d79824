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


def test_eval_batches_carry_dataset_indices(datamodule):
    seen = []
    for inputs, labels, indices in datamodule.val_dataloader():
        assert indices.dtype == torch.int64
        assert torch.equal(inputs, datamodule.val_set.tensors[0][indices])
        assert torch.equal(labels, datamodule.val_set.tensors[1][indices])
        seen += indices.tolist()
    assert seen == list(range(len(datamodule.val_set)))


def test_baseline_features_are_the_standardised_test_pixels(datamodule):
    images, digits = load_digits(return_X_y=True)
    train = torch.as_tensor(images[digits < 6], dtype=torch.float64) / 16
    mean, std = train.mean(0), train.std(0).clamp(min=1e-2)
    features = datamodule.baseline_features("test")
    labels = datamodule.labels("test")
    assert features.shape == (len(datamodule.test_set), 64)
    # Every row is the standardised version of a raw digit image of the same label.
    raw = {}
    for image, digit in zip(images, digits, strict=True):
        raw.setdefault(int(digit), []).append(torch.as_tensor(image, dtype=torch.float64) / 16)
    for row, label in zip(features[:20], labels[:20], strict=True):
        candidates = (torch.stack(raw[int(label)]) - mean) / std
        assert (candidates - row.double()).abs().amax(1).min() < 1e-5


def test_verification_pairs_are_balanced_seeded_and_match_labels(datamodule):
    pairs = datamodule.verification_pairs("test")
    labels = datamodule.labels("test")
    assert pairs.n_folds == 10 and len(pairs.issame) == 10 * 2 * 100
    assert torch.equal(pairs.issame, labels[pairs.first] == labels[pairs.second])
    folds = pairs.issame.view(10, 200)
    assert (folds[:, :100]).all() and not folds[:, 100:].any()  # LFW layout per fold
    again = DigitsDataModule()
    again.setup("test")
    assert all(
        torch.equal(a, b)
        for a, b in zip(pairs[:3], again.verification_pairs("test")[:3], strict=True)
    )
    other = DigitsDataModule(seed=1)
    other.setup("test")
    assert not torch.equal(pairs.first, other.verification_pairs("test").first)


def test_contract_errors(datamodule):
    with pytest.raises(ValueError, match="`stage` must be one of"):
        datamodule.verification_pairs("train")
    fresh = DigitsDataModule()
    assert fresh.num_classes == 6  # known at construction
    with pytest.raises(RuntimeError, match=r"setup\('fit'\)"):
        _ = fresh.train_labels
    with pytest.raises(RuntimeError, match=r"setup\('test'\)"):
        fresh.baseline_features("test")


def test_p_by_k_batches():
    dm = DigitsDataModule(batch_size=12, n_instances=4)
    dm.setup("fit")
    assert torch.equal(dm.train_labels, dm.train_set.tensors[1])
    for _, labels in dm.train_dataloader():
        classes, counts = labels.unique(return_counts=True)
        assert len(classes) == 3 and (counts == 4).all()
    with pytest.raises(ValueError, match="multiple of `n_instances`"):
        DigitsDataModule(batch_size=10, n_instances=4)
    with pytest.raises(ValueError, match="at most the number of `train_classes`"):
        DigitsDataModule(batch_size=32, n_instances=4)


def test_training_order_depends_on_seed_and_epoch_only(datamodule):
    from lightning.fabric.utilities.data import _set_sampler_epoch

    first = [labels for _, labels in datamodule.train_dataloader()]
    torch.manual_seed(123)  # the global generator plays no part
    again = [labels for _, labels in datamodule.train_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    loader = datamodule.train_dataloader()
    assert sorted(loader.sampler) == list(range(len(datamodule.train_set)))  # a permutation
    _set_sampler_epoch(loader, 1)  # what Lightning calls at the start of every epoch
    assert not torch.equal(next(iter(loader))[1], first[0])
    assert len(first) == len(datamodule.train_set) // 64
