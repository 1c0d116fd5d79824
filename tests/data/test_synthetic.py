"""SyntheticDataModule: seeded, class-clustered, open-set; the contract's batches and pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from marginkit.data import SyntheticDataModule


def _module(**kwargs):
    settings = dict(num_classes=5, num_eval_classes=3, samples_per_class=8, dim=16, batch_size=10)
    settings.update(kwargs)
    dm = SyntheticDataModule(**settings)
    dm.setup()
    return dm


def test_items_are_centre_plus_scaled_gaussian_noise():
    dm = _module(noise=0.5, samples_per_class=200, num_classes=2, dim=8)
    data = dm.datasets["train"]
    residuals = torch.stack(
        [data.item(i) - data.centre(int(data.classes[i])) for i in range(len(data))]
    )
    assert abs(residuals.std().item() - 0.5) < 0.03 and abs(residuals.mean().item()) < 0.03
    # Centres are N(0, 1) draws of numpy's generator seeded with (seed, 0, class).
    expected = np.random.default_rng([0, 0, 1]).standard_normal(8, dtype=np.float32)
    torch.testing.assert_close(data.centre(1), torch.from_numpy(expected))


def test_seeded_and_open_set():
    first, again, other = _module(), _module(), _module(seed=1)
    for stage in ("train", "val", "test"):
        a, b = first.datasets[stage], again.datasets[stage]
        assert torch.equal(a[3][0], b[3][0])
        assert not torch.equal(a[3][0], other.datasets[stage][3][0])
    assert set(first.train_labels.tolist()) == set(range(5))
    assert set(first.labels("val").tolist()) == set(first.labels("test").tolist()) == {5, 6, 7}
    val_items = {tuple(x.tolist()) for x, _, _ in first.datasets["val"]}
    test_items = {tuple(x.tolist()) for x, _, _ in first.datasets["test"]}
    assert not val_items & test_items
    assert len(val_items) == len(test_items) == 3 * 4


def test_batches_baseline_and_pairs():
    dm = _module()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (10, 16) and y.dtype == torch.int64
    seen = []
    for inputs, labels, indices in dm.test_dataloader():
        torch.testing.assert_close(inputs, dm.baseline_features("test")[indices])
        assert torch.equal(labels, dm.labels("test")[indices])
        seen += indices.tolist()
    assert seen == list(range(12))
    pairs = dm.verification_pairs("val")
    labels = dm.labels("val")
    assert torch.equal(pairs.issame, labels[pairs.first] == labels[pairs.second])


def test_images_and_p_by_k():
    dm = _module(image_size=6, channels=2, n_instances=2)
    assert dm.input_dim == 72
    for inputs, labels in dm.train_dataloader():
        assert inputs.shape == (10, 2, 6, 6)
        _, counts = labels.unique(return_counts=True)
        assert (counts == 2).all() and len(counts) == 5
    assert dm.baseline_features("val").shape == (12, 72)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"num_eval_classes": 1}, "`num_eval_classes` must be >= 2"),
        ({"noise": -1.0}, "`noise` must be >= 0"),
        ({"batch_size": 100}, "at most the training items"),
        ({"n_instances": 3}, "multiple of `n_instances`"),
        ({"n_instances": 1}, "need `num_classes` >= 10"),
        ({"val_fraction": 0.0}, "`val_fraction`"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _module(**kwargs)
