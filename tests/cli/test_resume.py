"""A training run killed mid-epoch (SIGKILL) and resumed ends exactly like an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
STEPS_PER_EPOCH = 1078 // 16  # digits 0-5, batch 16, last short batch dropped
EVERY_N_STEPS = 7
RUN = [
    "torch_threads=1",
    "logger=none",
    "callbacks.progress_bar=null",
    "data.batch_size=16",
    "trainer.max_epochs=4",
    f"callbacks.last_checkpoint.every_n_train_steps={EVERY_N_STEPS}",
    "seed=3",
]


def _command(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *RUN, f"hydra.run.dir={run_dir}", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_same_metrics(tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    result = subprocess.run(
        _command(uninterrupted), capture_output=True, text=True, env=_env(), timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = json.loads((uninterrupted / "metrics.json").read_text())

    killed = tmp_path / "killed"
    last = killed / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(
        _command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env()
    )
    try:
        deadline = time.monotonic() + 300
        # Kill once a step checkpoint of the second epoch exists: mid-epoch, mid-run.
        while time.monotonic() < deadline and process.poll() is None:
            if last.exists() and last.stat().st_size > 0:
                try:
                    step = torch.load(last, weights_only=True, map_location="cpu")["global_step"]
                except Exception:  # being written
                    step = 0
                if step > STEPS_PER_EPOCH:
                    break
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "metrics.json").exists()
    step = torch.load(last, weights_only=True, map_location="cpu")["global_step"]
    assert step % STEPS_PER_EPOCH != 0 and step < 4 * STEPS_PER_EPOCH  # mid-epoch

    result = subprocess.run(
        _command(killed, "resume=true"), capture_output=True, text=True, env=_env(), timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout + result.stderr
    resumed = json.loads((killed / "metrics.json").read_text())
    assert resumed == expected
