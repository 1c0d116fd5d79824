"""End-to-end runs of train.py in subprocesses (fast_dev_run, multirun, config errors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_fast_dev_run_writes_metrics(tmp_path):
    result = _run(["trainer.fast_dev_run=true", f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("test/precision@1", "test/cmc@5", "test/map@r", "test/tar@far=0.001", "test/auc"):
        assert key in metrics and 0.0 <= metrics[key] <= 1.0


@pytest.mark.parametrize(
    "experiment", sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
)
def test_every_experiment_runs(tmp_path, experiment):
    result = _run(
        [f"experiment={experiment}", "trainer.fast_dev_run=true", f"hydra.run.dir={tmp_path}/run"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_multirun_writes_one_metrics_file_per_job(tmp_path):
    result = _run(
        [
            "-m",
            "loss=softmax,arcface,cosface",
            "trainer.fast_dev_run=true",
            "logger=none",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    assert len(files) == 3
    for loss in ("softmax", "arcface", "cosface"):
        assert sum(f"loss={loss}" in f.parent.name for f in files) == 1


@pytest.mark.parametrize(
    "override,expected",
    [
        ("loss=triplet_typo", "Could not find 'loss/triplet_typo'"),
        ("loss.m=-0.5", "config error: `loss` (marginkit.losses.ArcFaceLoss): `m` must be in"),
        ("loss.s=0", "config error: `loss` (marginkit.losses.ArcFaceLoss): `s`"),
        ("model.monitor=val/precision@3", "`monitor` must be one of"),
        ("data.train_classes=[0,6]", "unseen in training"),
    ],
)
def test_config_mistakes_fail_before_training_in_one_line(tmp_path, override, expected):
    result = _run([override, f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_default_run_meets_the_quality_bar(tmp_path):
    """`make train`'s job: ArcFace on digits 0-5 retrieves unseen digits 6-9 at P@1 >= 0.90."""
    result = _run(["logger=none", f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test/precision@1"] >= 0.90
    assert metrics["val/precision@1"] >= 0.90
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").exists()
