"""End-to-end runs of train.py in subprocesses (fast_dev_run, sweeps, config errors, quality)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["torch_threads=1", "logger=none", "callbacks.progress_bar=null"]


def _run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_help_answers_without_the_training_stack(tmp_path):
    started = time.perf_counter()
    result = _run(["--help"], tmp_path)
    elapsed = time.perf_counter() - started
    print(f"train.py --help answered in {elapsed:.2f} s")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "== Configuration groups ==" in result.stdout
    assert "loss: " in result.stdout and "experiment: " in result.stdout


def test_the_cli_imports_no_heavy_module():
    code = (
        "import sys, marginkit.cli, marginkit.cli.sweep_summary;"
        "heavy = [m for m in ('torch', 'lightning', 'torchmetrics') if m in sys.modules];"
        "print(heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "[]"


def test_fast_dev_run_writes_metrics_and_the_baseline(tmp_path):
    result = _run(
        ["trainer.fast_dev_run=true", "torch_threads=1", f"hydra.run.dir={tmp_path}/run"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("test/precision@1", "test/cmc@5", "test/map@r", "test/tar@far=0.001", "test/auc"):
        assert key in metrics and 0.0 <= metrics[key] <= 1.0
    assert 0.9 < metrics["baseline/precision@1"] <= 1.0
    assert "raw inputs (test)" in result.stdout
    # Lightning's INFO lines once (not by Lightning's handler and Hydra's both).
    assert (result.stdout + result.stderr).count("GPU available") == 1


def _image_folder(root: Path, n_classes: int = 20, per_class: int = 4, size: int = 32) -> Path:
    """A tiny one-folder-per-class image set (random colour patterns) made with Pillow."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(n_classes):
        folder = root / f"class_{label:03d}"
        folder.mkdir(parents=True)
        base = rng.integers(0, 256, (size, size, 3))
        for item in range(per_class):
            noise = rng.integers(-20, 21, (size, size, 3))
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{item}.png")
    return root


def _experiment_overrides(experiment: str, tmp_path: Path) -> list[str]:
    """Shrink an experiment to tiny generated data and a CPU."""
    if experiment.startswith("digits"):
        return []
    if experiment.startswith("faces"):  # insightface's layout (train.rec, lfw.bin, ...)
        from tests.helpers.insightface_data import insightface_folder

        data = insightface_folder(tmp_path / "ms1m", n_identities=8, size=32, n_pairs=20)
        return [
            f"data.root={data}",
            "data.image_size=[32,32]",
            "data.num_workers=0",
            "data.persistent_workers=false",
            "data.pin_memory=false",
            "data.eval_batch_size=16",
            "data.batch_size=8",
            "backbone.input_size=32",
            "backbone.layers=[1,1,1,1]",
            "trainer=cpu",
            "trainer.precision=32-true",
        ]
    if experiment.startswith("glyphs"):  # the ASCII glyphs, small, cached in the test's folder
        return ["data.max_code_point=126", "data.image_size=16", f"data.cache_dir={tmp_path}/cache"]
    root = _image_folder(tmp_path / "images")
    tiny_images = [
        f"data.root={root}",
        "data.image_size=[32,32]",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "data.pin_memory=false",
        "data.eval_batch_size=16",
        "data.val_ratio=0.2",
        "data.test_ratio=0.2",
        "data.pairs_per_fold=2",
        "data.n_folds=2",
        "backbone.input_size=32",
        "trainer=cpu",
        "trainer.precision=32-true",
    ]
    if experiment == "products_triplet":
        return [*tiny_images, "data.batch_size=8", "data.n_instances=4"]
    return [*tiny_images, "data.batch_size=8", "backbone.layers=[1,1,1,1]"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment", sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
)
def test_every_experiment_runs(tmp_path, experiment):
    result = _run(
        [
            f"experiment={experiment}",
            "trainer.fast_dev_run=true",
            *TINY,
            f"hydra.run.dir={tmp_path}/run",
            *_experiment_overrides(experiment, tmp_path),
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_a_sweep_writes_a_summary_of_every_job(tmp_path):
    result = _run(
        [
            "-m",
            "loss=arcface,cosface",
            "loss.m=0.3,0.5",
            "trainer.fast_dev_run=true",
            *TINY,
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    assert len(files) == 4
    with (tmp_path / "sweep" / "summary.csv").open() as file:
        rows = list(csv.DictReader(file))
    combos = {(row["loss"], row["loss.m"]) for row in rows}
    assert combos == {(loss, m) for loss in ("arcface", "cosface") for m in ("0.3", "0.5")}
    for row in rows:
        job_dir = tmp_path / "sweep" / row["job"]
        metrics = json.loads((job_dir / "metrics.json").read_text())
        assert float(row["test/precision@1"]) == pytest.approx(metrics["test/precision@1"])
        assert row["status"] == "ok"
    assert "sweep" in result.stdout and "test/precision@1" in result.stdout


@pytest.mark.slow
def test_the_optuna_sweeper_runs_trials(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    result = _run(
        [
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=2",
            "trainer.max_epochs=1",
            *TINY,
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "sweep").glob("*/metrics.json"))) == 2
    assert (tmp_path / "sweep" / "optimization_results.yaml").exists()


@pytest.mark.parametrize(
    "override,expected",
    [
        ("loss=triplet_typo", "Could not find 'loss/triplet_typo'"),
        ("loss.m=-0.5", "config error: `loss` (marginkit.losses.ArcFaceLoss): `m` must be in"),
        ("loss.s=0", "config error: `loss` (marginkit.losses.ArcFaceLoss): `s`"),
        ("model.monitor=val/precision@3", "`monitor` must be one of"),
        ("data.train_classes=[0,6]", "unseen in training"),
        ("ckpt_path=/nonexistent/last.ckpt", "`ckpt_path` '/nonexistent/last.ckpt': no such file"),
    ],
)
def test_config_mistakes_fail_before_training_in_one_line(tmp_path, override, expected):
    result = _run([override, f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize(
    "override,expected",
    [
        (
            "trainer.max_epoch=3",
            "`trainer.max_epoch` is not a key of `trainer`; did you mean trainer.max_epochs?",
        ),
        ("loss.margin=0.5", "`loss.margin` is not a key of `loss`; did you mean loss.easy_margin?"),
        ("loss=arcfce", "Could not find 'loss/arcfce': did you mean loss=arcface"),
        (
            "optimizer.lr=abc",
            "`optimizer` (torch.optim.AdamW): `optimizer.lr` must be a number, got 'abc'",
        ),
        ("trainer.max_epochs=-1", "`trainer.max_epochs` must be a positive int, got -1"),
        ("+scheduler.warmup_ratio=2", "`scheduler` ("),
    ],
)
def test_mistakes_are_one_line_naming_the_key_with_exit_2(tmp_path, override, expected):
    result = _run([override, f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == lines[-1].strip() and lines[-1].startswith("config error: ")
    assert expected in lines[-1]
    assert sum(line.startswith("config error") for line in lines) == 1
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_an_rgb_folder_with_a_one_channel_backbone_names_in_channels(tmp_path):
    root = _image_folder(tmp_path / "images", n_classes=8, per_class=4, size=16)
    result = _run(
        [
            "data=image_folder",
            f"data.root={root}",
            "data.val_ratio=0.25",
            "data.test_ratio=0.25",
            "data.batch_size=4",
            "backbone=small_cnn",
            f"hydra.run.dir={tmp_path}/run",
        ],
        tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "config error: `backbone.in_channels` is 1 but the data gives 3-channel images" in (
        result.stderr
    )
    assert "set backbone.in_channels=3" in result.stderr and "Traceback" not in result.stderr


def test_the_non_finite_loss_stop_is_one_line(tmp_path):
    result = _run(
        ["optimizer.lr=1e30", "trainer.max_epochs=2", *TINY, f"hydra.run.dir={tmp_path}/run"],
        tmp_path,
    )
    # A diverged backbone gives non-finite embeddings, which the head refuses (naming the row)
    # before the loss is computed: one line, as a config error.
    assert result.returncode == 2
    assert "`embeddings` must be finite" in result.stderr and "diverged backbone" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_sweep_with_a_failing_job_still_writes_its_summary(tmp_path):
    result = _run(
        [
            "-m",
            "loss.m=0.3,-1",
            "trainer.fast_dev_run=true",
            *TINY,
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with (tmp_path / "sweep" / "summary.csv").open() as file:
        rows = {row["loss.m"]: row for row in csv.DictReader(file)}
    assert rows["0.3"]["status"] == "ok" and float(rows["0.3"]["test/precision@1"]) > 0
    assert rows["-1"]["status"] == "failed"
    assert rows["-1"]["error"].startswith("config error: `loss` (marginkit.losses.ArcFaceLoss)")


def _raw_pixel_baseline() -> tuple[float, float]:
    """precision@1 and MAP@R of the standardised raw pixels on the digits test split, computed
    here with scikit-learn and NumPy (cosine similarity, leave-one-out)."""
    import numpy as np
    from sklearn.datasets import load_digits

    images, digits = load_digits(return_X_y=True)
    images = images / 16.0
    train = np.isin(digits, [0, 1, 2, 3, 4, 5])
    mean, std = images[train].mean(0), np.maximum(images[train].std(0, ddof=1), 1e-2)
    # The test half of each unseen digit, as the datamodule splits it (seeded torch randperm).
    import torch

    generator = torch.Generator().manual_seed(0)
    test_idx = []
    for digit in (6, 7, 8, 9):
        idx = np.flatnonzero(digits == digit)
        idx = idx[torch.randperm(len(idx), generator=generator).numpy()]
        test_idx.append(idx[round(0.5 * len(idx)) :])
    test_idx = np.sort(np.concatenate(test_idx))
    x = (images[test_idx] - mean) / std
    y = digits[test_idx]
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    order = np.argsort(-similarity, axis=1, kind="stable")
    precision_at_1 = float(np.mean(y[order[:, 0]] == y))
    average_precisions = []
    for query in range(len(y)):
        r = int(np.sum(y == y[query])) - 1
        relevant = y[order[query, :r]] == y[query]
        hits = np.cumsum(relevant)
        average_precisions.append(np.sum(relevant * hits / np.arange(1, r + 1)) / r)
    return precision_at_1, float(np.mean(average_precisions))


@pytest.mark.slow
def test_default_run_beats_the_raw_pixels(tmp_path):
    """`make train`: ArcFace on digits 0-5 retrieves the unseen 6-9 better than raw pixels."""
    result = _run(["logger=none", f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    raw_precision_at_1, raw_map_at_r = _raw_pixel_baseline()
    assert metrics["baseline/precision@1"] == pytest.approx(raw_precision_at_1, abs=1e-6)
    assert metrics["baseline/map@r"] == pytest.approx(raw_map_at_r, abs=1e-4)
    assert metrics["test/precision@1"] >= raw_precision_at_1
    assert metrics["test/map@r"] >= raw_map_at_r
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").exists()
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
