"""Data checked before the first step: the setup errors naming the config key, the summary line."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from marginkit.data import DigitsDataModule, ImageFolderDataModule, SyntheticDataModule
from marginkit.data.image_files import scan_class_folders

ROOT = Path(__file__).resolve().parents[2]
SIDE = 8


def _make_folder(root: Path, sizes: dict[str, int]) -> Path:
    """One folder per class, ``sizes[name]`` random images in each (0: an empty folder)."""
    for name, count in sizes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for item in range(count):
            pixels = np.random.default_rng([len(name), item]).integers(0, 256, (SIDE, SIDE, 3))
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{item}.png")
    return root


def _folder(tmp_path: Path, n_classes: int = 10, per_class: int = 4) -> Path:
    return _make_folder(tmp_path / "images", {f"id{c:02d}": per_class for c in range(n_classes)})


def _dm(root, **kwargs) -> ImageFolderDataModule:
    settings = dict(
        val_ratio=0.2,
        test_ratio=0.2,
        image_size=(SIDE, SIDE),
        batch_size=4,
        num_workers=0,
        n_folds=2,
        pairs_per_fold=1,
    )
    return ImageFolderDataModule(None if root is None else str(root), **(settings | kwargs))


# ---------------------------------------------------------------------- a training batch
def test_a_batch_larger_than_the_training_split_names_data_batch_size(tmp_path):
    dm = _dm(_folder(tmp_path), batch_size=32)  # 6 training classes x 4 = 24 images
    with pytest.raises(
        ValueError,
        match=r"^`data.batch_size` \(32\) is larger than the training "
        r"split \(24 images\): lower it$",
    ):
        dm.setup("fit")
    digits = DigitsDataModule(batch_size=4000)
    n_train = int(np.isin(load_digits(return_X_y=True)[1], range(6)).sum())
    with pytest.raises(ValueError, match=rf"`data.batch_size` \(4000\) .* \({n_train} images\)"):
        digits.setup("fit")


def test_each_rank_must_fill_a_batch(tmp_path):
    dm = _dm(_folder(tmp_path), batch_size=16)
    dm.setup("fit")  # 24 images >= 16 on one process
    dm.trainer = SimpleNamespace(world_size=2, global_rank=0)  # what Lightning's setup sees
    with pytest.raises(
        ValueError,
        match=r"`data.batch_size` \(16\) is larger than each of the 2 "
        r"ranks' share of the training split \(12 of 24 images\)",
    ):
        dm.setup("fit")


def test_p_by_k_batches_are_checked_at_setup(tmp_path):
    folder = _folder(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"`data.batch_size` \(16\) asks for P×K batches of 8 "
        r"classes × 2 \(`data.n_instances`\), the training split has 6 classes",
    ):
        _dm(folder, batch_size=16, n_instances=2).setup("fit")
    with pytest.raises(
        ValueError,
        match=r"`data.n_instances` \(8\) is larger than the training "
        r"split's largest class \(4 images\)",
    ):
        _dm(folder, batch_size=16, n_instances=8).setup("fit")
    dm = _dm(folder, batch_size=4, n_instances=2)  # 6 classes x 2 chunks of 2: 6 batches of 2 x 2
    dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=8, global_rank=0)
    with pytest.raises(ValueError, match=r"leaves no P×K batch .* each of the 8 ranks"):
        dm.setup("fit")


# ------------------------------------------------------------ evaluation splits: 2 classes
def test_a_three_class_folder_names_data_val_ratio(tmp_path):
    dm = ImageFolderDataModule(str(_folder(tmp_path, n_classes=3)), num_workers=0)
    with pytest.raises(
        ValueError,
        match=r"^`data.val_ratio` \(0.1\) holds out 1 of the 3 classes "
        r"of `data.root` for the val split: retrieval and verification need at "
        r"least 2",
    ):
        dm.setup("fit")


def test_the_test_split_is_checked_before_training(tmp_path):
    # 12 classes: val_ratio 0.2 -> 2 classes, test_ratio 0.05 -> 1 class.
    dm = _dm(_folder(tmp_path, n_classes=12), test_ratio=0.05)
    with pytest.raises(ValueError, match=r"^`data.test_ratio` \(0.05\) holds out 1 of the 12"):
        dm.setup("fit")


def test_a_separate_root_or_pair_file_of_one_class(tmp_path):
    folder = _folder(tmp_path)
    single = _make_folder(tmp_path / "single", {"only": 3})
    with pytest.raises(ValueError, match=r"^`data.val_root` \('.*single'\) has 1 class folder"):
        _dm(folder, val_root=str(single)).setup("fit")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("only/0.png,only/1.png,1\nonly/1.png,only/2.png,1\n")
    dm = _dm(folder, test_root=str(single), test_pairs=str(pairs), test_ratio=0.0)
    with pytest.raises(
        ValueError,
        match=r"^`data.test_pairs` \('.*pairs.csv'\) names images of "
        r"1 folder",
    ):
        dm.setup("fit")
    embed_only = _dm(None, test_root=str(single), test_pairs=str(pairs))
    embed_only.setup("test")  # evaluation alone builds what it is given (embed.py)
    assert len(embed_only.paths("test")) == 3


def test_digits_with_one_evaluation_class_names_data_eval_classes():
    with pytest.raises(
        ValueError,
        match=r"^`data.eval_classes` \(\[6\]\) leaves the val split 1 "
        r"class",
    ):
        DigitsDataModule(eval_classes=[6]).setup("fit")


# --------------------------------------------------------------------- pair files, early
def test_a_missing_pair_file_fails_at_fit_setup(tmp_path):
    folder = _folder(tmp_path)
    missing = tmp_path / "nowhere" / "pairs.txt"
    dm = _dm(folder, test_root=str(folder), test_pairs=str(missing), test_ratio=0.0)
    with pytest.raises(
        FileNotFoundError,
        match=r"^`data.test_pairs` '.*nowhere/pairs.txt' does "
        r"not exist",
    ):
        dm.setup("fit")


def test_a_pair_file_that_does_not_parse_fails_at_fit_setup_naming_its_line(tmp_path):
    folder = _folder(tmp_path)
    bad = tmp_path / "pairs.txt"
    bad.write_text("id00\t1\t2\nid01\t1\t2\nid00 1\n")
    dm = _dm(folder, val_root=str(folder), val_pairs=str(bad))
    with pytest.raises(
        ValueError,
        match=r"^`data.val_pairs`: .*pairs.txt: line 3: expected 3 "
        r"fields",
    ):
        dm.setup("fit")


# ------------------------------------------------------------------------ the summary line
def _summary_records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("train ")]


def test_summary_counts_batches_unreadable_and_empty_folders(tmp_path, caplog):
    sizes = {f"id{c:02d}": 5 for c in range(10)} | {"tiny": 1, "void": 0}
    folder = _make_folder(tmp_path / "images", sizes)
    (folder / "id03" / "4.png").write_bytes(b"not an image")
    dm = _dm(folder, batch_size=7, min_images_per_class=2, verify_images=True)
    with pytest.warns(RuntimeWarning, match="dropped 1 unreadable"):
        dm.setup("fit")
    n_train = len(dm.labels("train"))
    train_classes, n_val = dm.num_classes, len(dm.labels("val"))
    # 10 classes of 5 kept (tiny: 1 < 2): 6 train, 2 val, 2 test; one train or eval image lost.
    assert (train_classes, len(dm.class_names("val")), len(dm.class_names("test"))) == (6, 2, 2)
    assert n_train + n_val + len(dm.labels("test")) == 10 * 5 - 1
    expected = (
        f"train 6 classes / {n_train} images -> {n_train // 7} batches of 7 "
        f"({n_train % 7} dropped each epoch), val 2 classes / {n_val} images, test 2 classes / "
        f"{50 - 1 - n_train - n_val} images, 1 unreadable image, 1 empty folder, 1 class under "
        "`data.min_images_per_class` (2) left out"
    )
    assert dm.summary() == expected
    assert scan_class_folders(folder).empty == ["void"]
    with caplog.at_level(logging.INFO):
        dm.train_dataloader(), dm.val_dataloader(), dm.train_dataloader(), dm.test_dataloader()
    assert _summary_records(caplog) == [expected]  # logged once, when a loader is first built


def test_summary_counts_images_found_unreadable_while_reading(tmp_path):
    dm = _dm(_folder(tmp_path), batch_size=5)
    dm.setup("fit")
    assert "unreadable" not in dm.summary()
    Path(dm.paths("val")[1]).write_bytes(b"junk")
    with pytest.warns(RuntimeWarning, match="skipped 1 unreadable"):
        list(dm.val_dataloader())
    assert dm.summary().endswith("test 2 classes / 8 images, 1 unreadable image")
    assert dm.summary().startswith("train 6 classes / 24 images -> 4 batches of 5 (4 dropped")


def test_summary_of_a_pair_file_split_and_p_by_k_batches(tmp_path):
    folder = _folder(tmp_path)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("id00/0.png,id00/1.png,1\nid00/0.png,id01/0.png,0\nid01/1.png,id01/2.png,1\n")
    dm = _dm(
        folder,
        test_root=str(folder),
        test_pairs=str(pairs),
        test_ratio=0.0,
        batch_size=4,
        n_instances=2,
        val_ratio=0.2,
    )
    dm.setup("fit")
    # 8 training classes x 2 chunks of 2 = 16 chunks, 2 per batch: 8 batches of 2 classes x 2.
    assert dm.summary() == (
        "train 8 classes / 32 images -> 8 batches of 2 classes × 2, val 2 classes / 8 images, "
        "test 2 classes / 5 images (3 pairs of pairs.csv)"
    )


def test_summary_of_digits_and_synthetic():
    digits = load_digits(return_X_y=True)[1]
    n_train = int(np.isin(digits, range(6)).sum())
    n_val = sum(round(0.5 * int((digits == d).sum())) for d in range(6, 10))
    n_test = int(np.isin(digits, range(6, 10)).sum()) - n_val
    dm = DigitsDataModule()
    dm.setup("fit")
    assert dm.summary() == (
        f"train 6 classes / {n_train} images -> {n_train // 64} batches of 64 ({n_train % 64} "
        f"dropped each epoch), val 4 classes / {n_val} images, test 4 classes / {n_test} images"
    )
    synthetic = SyntheticDataModule(
        num_classes=5, num_eval_classes=3, samples_per_class=8, dim=4, batch_size=40
    )
    synthetic.setup("fit")
    assert synthetic.summary() == (
        "train 5 classes / 40 items -> 1 batch of 40, val 3 classes / 12 items, "
        "test 3 classes / 12 items"
    )


# ------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_train_py_on_a_three_class_folder_is_one_line_naming_data_val_ratio(tmp_path):
    folder = _folder(tmp_path, n_classes=3, per_class=2)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "data=image_folder",
            f"data.root={folder}",
            "torch_threads=1",
            f"hydra.run.dir={tmp_path}/run",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("config error: "), result.stderr[-3000:]
    assert "`data.val_ratio` (0.1) holds out 1 of the 3 classes" in lines[0]
