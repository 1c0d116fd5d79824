"""train.py / eval.py on a generated insightface folder: val/<target>/accuracy during training."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.insightface_data import insightface_folder

ROOT = Path(__file__).resolve().parents[2]
TINY_DATA = [
    "data=insightface",
    "data.image_size=[16,16]",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "data.pin_memory=false",
]
TINY_MODEL = [
    "backbone=small_cnn",
    "backbone.in_channels=3",
    "backbone.image_size=null",
    "data.batch_size=8",
    "torch_threads=1",
    "callbacks.progress_bar=null",
]


def _script(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, str(ROOT / name), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.mark.slow
def test_train_logs_target_accuracy_and_eval_gives_the_same_numbers(tmp_path):
    data = insightface_folder(tmp_path / "ms1m")
    run = tmp_path / "run"
    result = _script(
        "train.py",
        [
            *TINY_DATA,
            f"data.root={data}",
            *TINY_MODEL,
            "trainer.max_epochs=2",
            "model.monitor=val/lfw/accuracy",
            f"hydra.run.dir={run}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    for target in ("lfw", "cfp_fp"):
        for name in ("accuracy", "accuracy_std", "threshold", "best_accuracy"):
            assert f"val/{target}/{name}" in metrics
        assert 0.5 <= metrics[f"val/{target}/accuracy"] <= 1.0
    # logged during training: one row per epoch end in the CSV logger's file
    rows = list(csv.DictReader(next((run / "csv").rglob("metrics.csv")).open()))
    logged = [row for row in rows if row.get("val/lfw/accuracy")]
    assert [int(row["step"]) for row in logged] == [3, 6]
    best = max(float(row["val/lfw/accuracy"]) for row in logged)
    assert metrics["val/lfw/accuracy"] == pytest.approx(best, abs=1e-12)

    evaluated = _script(
        "eval.py",
        [
            f"ckpt_path={run}",
            *TINY_DATA,
            f"data.root={data}",
            "data.val_targets=[lfw,cfp_fp]",
            f"hydra.run.dir={tmp_path / 'eval'}",
        ],
        tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "lfw" in evaluated.stdout and "threshold" in evaluated.stdout
    scores = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key, value in scores.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key
    assert "val/lfw/accuracy" in scores


@pytest.mark.slow
def test_default_monitor_and_a_wrong_target_monitor(tmp_path):
    data = insightface_folder(tmp_path / "ms1m", n_pairs=20)
    run = tmp_path / "run"
    args = [*TINY_DATA, f"data.root={data}", *TINY_MODEL, "logger=none", "trainer.max_epochs=1"]
    result = _script(
        "train.py", [*args, "data.val_every_n_steps=1", f"hydra.run.dir={run}"], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "checkpoints" / "best.ckpt").is_file()  # monitored val/lfw/accuracy
    assert "val/lfw/accuracy" in json.loads((run / "metrics.json").read_text())
    wrong = _script(
        "train.py",
        [*args, "model.monitor=val/agedb_30/accuracy", f"hydra.run.dir={tmp_path / 'wrong'}"],
        tmp_path,
    )
    assert wrong.returncode == 2
    assert "agedb_30" in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_ddp_training_scores_the_targets_once_as_eval_does(tmp_path):
    data = insightface_folder(tmp_path / "ms1m", n_identities=8, n_pairs=41)  # 82 images: 41 each
    run = tmp_path / "run"
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "logger=none"]
    result = _script(
        "train.py",
        [
            *TINY_DATA,
            f"data.root={data}",
            *TINY_MODEL,
            *ddp,
            "trainer.max_epochs=1",
            f"hydra.run.dir={run}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    evaluated = _script(
        "eval.py",
        [f"ckpt_path={run}", *TINY_DATA, f"data.root={data}", f"hydra.run.dir={tmp_path / 'e'}"],
        tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    scores = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert set(scores) >= {"val/lfw/accuracy", "val/cfp_fp/accuracy"}
    for key, value in scores.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key
