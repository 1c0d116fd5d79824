"""InsightFaceDataModule: training batches from RecordIO, targets from .bin files or folders."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from marginkit.data import InsightFaceDataModule
from marginkit.data.recordio import RecordIOError
from marginkit.models.verification_targets import evaluate_targets
from tests.helpers.insightface_data import (
    draw_identities,
    insightface_folder,
    insightface_records,
    ir_header,
    write_property,
    write_rec,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return insightface_folder(tmp_path_factory.mktemp("ms1m") / "data")


def _module(folder, **kwargs):
    options = {"image_size": None, "batch_size": 4, "num_workers": 0, "horizontal_flip": False}
    return InsightFaceDataModule(str(folder), **(options | kwargs))


def _decoded(dm, key):
    payload = dm.datasets["train"].records.read(key)
    return Image.open(io.BytesIO(payload[24:])).convert("RGB")


def test_training_batches_are_the_records_normalised(folder):
    dm = _module(folder, batch_size=24)
    dm.setup("fit")
    assert dm.num_classes == 6 and dm.train_labels.tolist() == [i // 4 for i in range(24)]
    x, y = dm.datasets["train"][5]  # key 6
    assert int(y) == 1 and x.dtype == torch.uint8 and x.shape == (16, 16, 3)
    pixels = np.asarray(_decoded(dm, 6), dtype=np.float64)
    batch_x, batch_y = next(iter(dm.train_dataloader()))
    assert batch_x.shape == (24, 16, 16, 3) and sorted(batch_y.tolist()) == dm.train_labels.tolist()
    # what the training step sees: the batch normalised after the transfer to the device
    normalised, labels = dm.on_after_batch_transfer([batch_x, batch_y], 0)
    assert normalised.shape == (24, 3, 16, 16) and normalised.dtype == torch.float32
    assert labels is batch_y
    row = next(i for i in range(24) if torch.equal(batch_x[i], x))
    expected = (pixels / 255.0 - 0.5) / 0.5
    assert np.allclose(normalised[row].permute(1, 2, 0).double().numpy(), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("image_size", "crop_size", "flip", "tolerance"),
    [
        (None, [10, 12], True, 1e-6),
        ([20, 12], None, False, 1.0 / 255 / 0.5 + 1e-6),
        ([24, 24], [16, 16], True, 1.0 / 255 / 0.5 + 1e-6),
    ],
)
def test_uint8_pipeline_is_the_image_folder_transform(
    folder, image_size, crop_size, flip, tolerance
):
    from marginkit.data.transforms import to_tensor

    dm = _module(folder, image_size=image_size, crop_size=crop_size, horizontal_flip=flip)
    dm.setup("fit")
    payload = dm.datasets["train"].records.read(3)
    for seed in range(4):  # same torch draws: same crop window and flip
        torch.manual_seed(seed)
        reference = dm.transform(train=True)(to_tensor(_decoded(dm, 3)))
        torch.manual_seed(seed)
        ours = dm.normalize(dm.pixel_pipeline()(payload[24:])[None])[0]
        assert ours.shape == reference.shape
        assert (ours - reference).abs().max() <= tolerance


def test_pk_batches_and_targets(folder):
    dm = _module(folder, batch_size=8, n_instances=4, image_size=[8, 8])
    dm.setup("fit")
    _, labels = next(iter(dm.train_dataloader()))
    assert sorted(torch.bincount(labels)[torch.bincount(labels) > 0].tolist()) == [4, 4]
    assert dm.target_names == ["cfp_fp", "lfw"]
    targets = dm.verification_targets()
    assert [t.name for t in targets] == ["cfp_fp", "lfw"]
    assert len(targets[1].images) == 80 and targets[1].issame.tolist() == [True, False] * 20
    assert dm.val_dataloader() == [] and dm.verification_pairs("val") is None


def test_missing_target_and_bad_options(folder):
    dm = _module(folder, val_targets=["agedb_30"])
    with pytest.raises(FileNotFoundError, match="agedb_30"):
        dm.setup("validate")
    with pytest.raises(TypeError, match="val_targets"):
        _module(folder, val_targets="lfw")
    with pytest.raises(ValueError, match="val_every_n_steps"):
        _module(folder, val_every_n_steps=0)


def test_undecodable_records_are_skipped_with_one_counting_warning(tmp_path):
    folders = draw_identities(tmp_path / "ids", 2, 4, 8)
    records, _ = insightface_records(folders)
    records[2] = (2, ir_header(0, b"not a jpeg"))
    records[3] = (3, ir_header(0, b"\xff\xd8 broken"))
    write_rec(tmp_path / "train", records)
    write_property(tmp_path, 2, 8)
    dm = _module(tmp_path, batch_size=8)
    dm.setup("fit")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(dm.train_dataloader())
    assert [len(y) for _, y in batches] == [6]
    messages = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(messages) == 1 and "skipped 2 record(s)" in messages[0]


def test_truncated_rec_fails_at_setup(tmp_path):
    folders = draw_identities(tmp_path / "ids", 2, 2, 8)
    records, _ = insightface_records(folders)
    write_rec(tmp_path / "train", records)
    rec = tmp_path / "train.rec"
    rec.write_bytes(rec.read_bytes()[:-10])
    with pytest.raises(RecordIOError, match=r"train\.rec"):
        _module(tmp_path).setup("fit")


class _MeanColour(torch.nn.Module):
    """A fixed 'backbone': per-channel means of four quadrants (no training needed)."""

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)


def test_bin_and_folder_with_pairs_give_the_same_numbers(tmp_path):
    held_out = draw_identities(tmp_path / "lfw", 4, 3, 12, seed=7)
    lines, images, issame = [], [], []
    rng = np.random.default_rng(0)
    names = list(held_out)
    for number in range(20):
        a = names[number % 4]
        if number % 2 == 0:
            i, j = rng.choice(3, 2, replace=False)
            lines.append(f"{a}\t{i + 1}\t{j + 1}")
            paths = held_out[a][i], held_out[a][j]
        else:
            b = names[(number + 1) % 4]
            i, j = rng.integers(3, size=2)
            lines.append(f"{a}\t{i + 1}\t{b}\t{j + 1}")
            paths = held_out[a][i], held_out[b][j]
        images += [p.read_bytes() for p in paths]
        issame.append(number % 2 == 0)
    for name, paths in held_out.items():
        for number, path in enumerate(paths, start=1):
            path.rename(path.parent / f"{name}_{number:04d}.jpg")
    (tmp_path / "lfw" / "pairs.txt").write_text("\n".join(lines) + "\n")
    import pickle

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "lfw.bin").write_bytes(pickle.dumps((images, issame), protocol=2))
    results = []
    for root in (tmp_path, tmp_path / "bin"):
        dm = _module(root, val_targets=["lfw"], eval_batch_size=7)
        dm.setup("validate")
        results.append(evaluate_targets(_MeanColour(), dm))
    assert results[0] == results[1]
    assert set(results[0]) >= {"val/lfw/accuracy", "val/lfw/accuracy_std", "val/lfw/threshold"}
