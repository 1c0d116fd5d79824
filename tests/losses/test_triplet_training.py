"""End to end: `python train.py loss=triplet` on the digits default retrieves unseen digits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_triplet_loss_on_digits_reaches_precision_at_1(tmp_path):
    """All-triplets TripletLossWithMiner on P×K = 6×8 batches of digits 0-5; test on unseen 6-9."""
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "loss=triplet",
        "logger=none",
        "data.batch_size=48",  # P = 6 classes (every training digit) x K = 8 instances
        "data.n_instances=8",
        "trainer.max_epochs=5",
        f"hydra.run.dir={tmp_path}/run",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test/precision@1"] >= 0.90
