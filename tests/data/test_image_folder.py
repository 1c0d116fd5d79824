"""ImageFolderDataModule on small generated image folders: splits, transforms, corrupt files, pairs."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from PIL import Image
from torch.utils.data import DistributedSampler

from marginkit.data import ImageFolderDataModule
from marginkit.data.image_folder import scan_image_folder

N_CLASSES, PER_CLASS, SIDE = 10, 4, 16


def _colour(label: int, item: int) -> np.ndarray:
    rng = np.random.default_rng([label, item])
    return rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)


def _make_folder(root: Path, classes=range(N_CLASSES), per_class=PER_CLASS, suffix=".png"):
    for label in classes:
        folder = root / f"id{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for item in range(per_class):
            Image.fromarray(_colour(label, item)).save(folder / f"{item}{suffix}")
    return root


@pytest.fixture
def folder(tmp_path):
    return _make_folder(tmp_path / "images")


def _dm(root, **kwargs):
    settings = dict(
        val_ratio=0.2,
        test_ratio=0.2,
        image_size=(SIDE, SIDE),
        batch_size=4,
        num_workers=0,
        n_folds=2,
        pairs_per_fold=3,
        horizontal_flip=False,
    )
    settings.update(kwargs)
    return ImageFolderDataModule(root, **settings)


def test_disjoint_seeded_class_splits(folder):
    dm = _dm(folder)
    with pytest.raises(RuntimeError, match=r"call `setup\('fit'\)`"):
        _ = dm.num_classes
    dm.setup()
    names = {stage: dm.class_names(stage) for stage in ("train", "val", "test")}
    assert [len(names[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert set().union(*names.values()) == {f"id{c:02d}" for c in range(N_CLASSES)}
    assert dm.num_classes == 6
    assert torch.equal(dm.train_labels, torch.arange(6).repeat_interleave(PER_CLASS))
    for stage in ("train", "val", "test"):  # every path sits in the folder of its label's class
        for path, label in zip(dm.paths(stage), dm.labels(stage).tolist(), strict=True):
            assert Path(path).parent.name == names[stage][label]
    same = _dm(folder)
    same.setup()
    assert same.class_names("test") == names["test"]
    other = _dm(folder, seed=5)
    other.setup()
    assert other.class_names("val") + other.class_names("test") != names["val"] + names["test"]


def test_pixels_match_an_independent_decode(folder):
    dm = _dm(folder, mean=(0.5, 0.25, 0.5), std=(0.5, 0.5, 0.25))
    dm.setup("fit")
    inputs, labels, indices = next(iter(dm.val_dataloader()))
    assert torch.equal(labels, dm.labels("val")[indices])
    for row, index in zip(inputs, indices.tolist(), strict=True):
        path = Path(dm.paths("val")[index])
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0
        expected = (pixels - [0.5, 0.25, 0.5]) / [0.5, 0.5, 0.25]
        np.testing.assert_allclose(row.permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_separate_roots_and_grayscale(tmp_path):
    train = _make_folder(tmp_path / "train", classes=range(3))
    test = _make_folder(tmp_path / "test", classes=range(7, 9), per_class=2)
    dm = ImageFolderDataModule(
        train_root=str(train),
        val_root=str(test),
        test_root=str(test),
        image_size=(8, 8),
        grayscale=True,
        mean=[0.5],
        std=[0.5],
        batch_size=2,
        num_workers=0,
        n_folds=2,
        pairs_per_fold=1,
    )
    dm.setup()
    assert dm.num_classes == 3 and len(dm.paths("test")) == 4
    inputs, _labels, _ = next(iter(dm.test_dataloader()))
    assert inputs.shape == (4, 1, 8, 8)


def test_an_unreadable_image_is_skipped_with_one_warning(folder):
    dm = _dm(folder)
    dm.setup("fit")
    broken = dm.paths("train")[5]
    Path(broken).write_bytes(b"not an image")
    Path(dm.paths("train")[9]).write_bytes(
        Path(dm.paths("train")[9]).read_bytes()[:40]
    )  # truncated
    with pytest.warns(RuntimeWarning, match=r"skipped 2 unreadable image\(s\) of the train split"):
        n_items = sum(len(labels) for _, labels in dm.train_dataloader())
    assert n_items == 24 - 2  # 6 classes × 4, no batch dropped: 24 is a multiple of 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same files again: no new warning
        assert sum(len(labels) for _, labels in dm.train_dataloader()) == 22


def test_unreadable_images_counted_across_worker_processes(folder):
    dm = _dm(folder, num_workers=2, persistent_workers=True)
    dm.setup("fit")
    Path(dm.paths("val")[2]).write_bytes(b"\x89PNG broken")
    with pytest.warns(RuntimeWarning, match=r"skipped 1 unreadable image"):
        indices = torch.cat([batch[2] for batch in dm.val_dataloader()])
    assert sorted(indices.tolist()) == [i for i in range(8) if i != 2]


def test_verify_images_drops_them_at_setup(folder):
    dm = _dm(folder, verify_images=True)
    bad = sorted((folder).glob("*/1.png"))[0]
    bad.write_bytes(b"broken")
    with pytest.warns(RuntimeWarning, match=r"dropped 1 unreadable image"):
        dm.setup()
    assert all(str(bad) not in dm.paths(s) for s in ("train", "val", "test"))


def test_p_by_k_loader_is_rank_aware_and_lightning_sets_its_epoch(folder):
    dm = _dm(folder, n_instances=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, DistributedSampler)  # Lightning leaves it as it is
    batches = [labels for _, labels in loader]
    assert all(len(labels.unique()) == 2 and len(labels) == 4 for labels in batches)
    _set_sampler_epoch(loader, 3)  # what Lightning's fit loop calls every epoch
    assert loader.sampler.batch_sampler.epoch == 3
    assert [labels.tolist() for _, labels in loader] != [b.tolist() for b in batches]
    ranks = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        ranks.append([indices for indices in dm.train_dataloader().sampler])
    assert len(ranks[0]) == len(ranks[1]) and not set(ranks[0]) & set(ranks[1])


def test_baseline_is_pooled_normalised_pixels(folder):
    dm = _dm(folder, baseline_size=4)
    dm.setup("test")
    Path(dm.paths("test")[1]).write_bytes(b"broken")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        features = dm.baseline_features("test")
    assert features.shape == (8, 3 * 4 * 4)
    assert torch.isnan(features[1]).all() and torch.isfinite(features[[0, *range(2, 8)]]).all()
    pixels = np.asarray(Image.open(dm.paths("test")[3]).convert("RGB"), dtype=np.float64)
    normalised = (pixels / 255.0 - 0.5) / 0.5
    blocks = normalised.reshape(4, 4, 4, 4, 3).mean(axis=(1, 3))  # 4×4 blocks of a 16×16 image
    np.testing.assert_allclose(features[3].numpy(), blocks.transpose(2, 0, 1).ravel(), atol=1e-5)
    without = _dm(folder, baseline_size=None)
    without.setup("test")
    assert without.baseline_features("test") is None


def _lfw_folder(root: Path) -> Path:
    for name, count in (("Ann_A", 3), ("Bob_B", 2), ("Cy_C", 1)):
        (root / name).mkdir(parents=True)
        for number in range(1, count + 1):
            image = Image.fromarray(_colour(len(name), number))
            image.save(root / name / f"{name}_{number:04d}.jpg")
    return root


LFW_PAIRS = "2\t2\nAnn_A\t1\t2\nBob_B\t1\t2\nAnn_A\t1\tCy_C\t1\nBob_B\t2\tCy_C\t1\n" + (
    "Ann_A\t2\t3\nAnn_A\t1\t3\nAnn_A\t3\tBob_B\t1\nCy_C\t1\tBob_B\t1\n"
)


def test_pair_file_split_scores_exactly_the_files_pairs(tmp_path, folder):
    lfw = _lfw_folder(tmp_path / "lfw")
    pair_file = tmp_path / "pairs.txt"
    pair_file.write_text(LFW_PAIRS)
    dm = ImageFolderDataModule(
        root=str(folder),
        test_root=str(lfw),
        test_pairs=str(pair_file),
        val_ratio=0.2,
        test_ratio=0.0,
        image_size=(SIDE, SIDE),
        batch_size=4,
        num_workers=0,
        pairs_per_fold=2,
    )
    dm.setup("test")
    pairs = dm.verification_pairs("test")
    assert pairs.n_folds == 2  # from the LFW header
    paths = dm.paths("test")
    names = [line.split("\t") for line in LFW_PAIRS.splitlines()[1:]]
    for i, fields in enumerate(names):
        if len(fields) == 3:
            expected = (
                f"{fields[0]}/{fields[0]}_{int(fields[1]):04d}.jpg",
                f"{fields[0]}/{fields[0]}_{int(fields[2]):04d}.jpg",
            )
        else:
            expected = (
                f"{fields[0]}/{fields[0]}_{int(fields[1]):04d}.jpg",
                f"{fields[2]}/{fields[2]}_{int(fields[3]):04d}.jpg",
            )
        got = tuple(
            Path(paths[j]).relative_to(lfw).as_posix() for j in (pairs.first[i], pairs.second[i])
        )
        assert got == expected
        assert bool(pairs.issame[i]) == (len(fields) == 3)
    labels = dm.labels("test")
    assert torch.equal(pairs.issame, labels[pairs.first] == labels[pairs.second])
    assert len(paths) == 6  # every image the file names, once
    with pytest.raises(RuntimeError, match=r"setup\('fit'\)"):
        _ = dm.num_classes  # the training split was not built for the test stage
    dm.setup("fit")
    assert dm.num_classes == 8
    assert dm.verification_pairs("val") is not None  # seeded pairs of the held-out classes


def test_csv_pairs_missing_files_and_bad_arguments(tmp_path, folder):
    (tmp_path / "pairs.csv").write_text("id00/0.png,id00/1.png,1\nid00/0.png,id01/missing.png,0\n")
    dm = _dm(None, test_root=str(folder), test_pairs=str(tmp_path / "pairs.csv"))
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) named by `test_pairs`"):
        dm.setup("test")
    with pytest.raises(ValueError, match="give `root`"):
        ImageFolderDataModule()
    with pytest.raises(ValueError, match=r"`val_ratio` \+ `test_ratio` must be < 1"):
        _dm(folder, val_ratio=0.5, test_ratio=0.5)
    with pytest.raises(ValueError, match="`mean` and `std` must have 1 or 3 values"):
        _dm(folder, mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="`pairs_format` must be one of"):
        _dm(folder, pairs_format="json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _dm(tmp_path / "nowhere").setup("fit")


def test_scan_skips_hidden_and_non_images(tmp_path):
    root = _make_folder(tmp_path / "r", classes=range(2), per_class=1)
    (root / "id00" / ".hidden.png").write_bytes(b"x")
    (root / "id00" / "notes.txt").write_text("x")
    (root / ".cache").mkdir()
    (root / "empty").mkdir()
    classes = scan_image_folder(root)
    assert list(classes) == ["id00", "id01"]
    assert [Path(p).name for p in classes["id00"]] == ["0.png"]


class _Probe(L.LightningModule):
    """The smallest module that runs a datamodule's loaders through Lightning's loops."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 2)
        self.seen: list[int] = []

    def training_step(self, batch, batch_idx):
        inputs, _labels = batch
        return self.layer(inputs.mean((2, 3))).sum()

    def validation_step(self, batch, batch_idx):
        self.seen += batch[2].tolist()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_loops_report_an_unreadable_image_once(folder):
    dm = _dm(folder, num_workers=1, persistent_workers=True)
    dm.setup("fit")
    Path(dm.paths("val")[0]).write_bytes(b"junk")
    probe = _Probe()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with pytest.warns(RuntimeWarning, match="skipped 1 unreadable") as caught:
        trainer.fit(probe, datamodule=dm)
    assert sum("unreadable" in str(w.message) for w in caught) == 1
    assert sorted(probe.seen) == sorted(list(range(1, 8)) * 2)  # two epochs, item 0 dropped


def test_deterministic_data_order_keeps_the_unreadable_image_warning(folder):
    from marginkit.cli.resume import DeterministicDataOrder

    dm = _dm(folder)
    dm.setup("fit")
    Path(dm.paths("train")[3]).write_bytes(b"junk")
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[DeterministicDataOrder(seed=0)],
    )
    with pytest.warns(RuntimeWarning, match="skipped 1 unreadable image") as caught:
        trainer.fit(_Probe(), datamodule=dm)
    assert sum("unreadable" in str(w.message) for w in caught) == 1
    assert int(dm.datasets["train"].unreadable.sum()) == 1


def test_a_resumed_epoch_warns_at_its_last_batch(folder):
    """A loader rebuilt to skip the batches already trained warns when its last batch is out."""
    from marginkit.cli.resume import SkippingBatchSampler, _rebuilt

    dm = _dm(folder)
    dm.setup("fit")
    loader = dm.train_dataloader()
    order = list(loader.batch_sampler)  # epoch 0's batches, what the resumed loader replays
    n_batches = len(order)
    Path(dm.paths("train")[order[-1][0]]).write_bytes(b"junk")  # in the epoch's last batch
    resumed = _rebuilt(loader, SkippingBatchSampler(loader.batch_sampler, skip=2))
    assert type(resumed) is type(loader) and len(resumed) == n_batches
    batches = iter(resumed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Lightning asks for the remaining batches only: the iterator is never exhausted.
        delivered = [next(batches) for _ in range(n_batches - 2)]
    assert [labels.tolist() for _, labels in delivered[:-1]] == [
        dm.train_labels[batch].tolist() for batch in order[2:-1]
    ]
    assert len(delivered[-1][1]) == 3  # the broken file left out of its batch of 4
    assert [str(w.message).split(" (")[0] for w in caught] == [
        "skipped 1 unreadable image(s) of the train split"
    ]
