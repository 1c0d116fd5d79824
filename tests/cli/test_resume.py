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


# The default `python train.py` (digits, 30 epochs, the default callbacks), made quiet.
DEFAULT = ["logger=none", "callbacks.progress_bar=null"]


def _train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        capture_output=True,
        text=True,
        env={**_env(), "HYDRA_FULL_ERROR": "0"},
        cwd=cwd,
        timeout=600,
    )


def _epoch_of(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True, map_location="cpu")["epoch"])
    except Exception:  # being written
        return -1


@pytest.mark.slow
def test_the_default_run_killed_a_few_epochs_in_resumes_to_the_same_metrics(tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    result = _train([*DEFAULT, f"hydra.run.dir={uninterrupted}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = json.loads((uninterrupted / "metrics.json").read_text())

    killed = tmp_path / "killed"
    last = killed / "checkpoints" / "last.ckpt"
    command = [sys.executable, str(ROOT / "train.py"), *DEFAULT, f"hydra.run.dir={killed}"]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), cwd=tmp_path
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if last.exists() and last.stat().st_size > 0 and _epoch_of(last) >= 2:
                break
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "metrics.json").exists()
    assert 2 <= _epoch_of(last) < 29  # an end-of-epoch checkpoint, a few epochs in

    result = _train([*DEFAULT, f"hydra.run.dir={killed}", "resume=true"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout + result.stderr
    assert json.loads((killed / "metrics.json").read_text()) == expected


def test_a_named_run_resumes_only_itself(tmp_path):
    logs = [*DEFAULT, f"paths.log_dir={tmp_path / 'logs'}"]
    other = _train([*logs, "run_name=other", "trainer.max_epochs=1"], tmp_path)
    assert other.returncode == 0, other.stderr[-3000:]
    before = (tmp_path / "logs/train/other/checkpoints/best.ckpt").read_bytes()
    result = _train([*logs, "run_name=exp1", "resume=true"], tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("config error: `resume` is true but run 'exp1' has no")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "logs/train/exp1/checkpoints").exists()
    assert (tmp_path / "logs/train/other/checkpoints/best.ckpt").read_bytes() == before


@pytest.mark.slow
def test_resume_continues_with_the_run_s_stored_config(tmp_path):
    logs = [*DEFAULT, f"paths.log_dir={tmp_path / 'logs'}", "run_name=exp2"]
    first = _train([*logs, "trainer.max_epochs=2", "data.batch_size=32"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "logs" / "train" / "exp2"
    original = (run / ".hydra" / "config.yaml").read_text()
    # Only what changes is repeated: the batch size comes from the run's stored config.
    resumed = _train([*logs, "resume=true", "trainer.max_epochs=3"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (run / ".hydra" / "config.yaml").read_text() == original
    from omegaconf import OmegaConf

    record = OmegaConf.load(run / ".hydra" / "resumed" / "config.yaml")
    assert record.trainer.max_epochs == 3 and record.data.batch_size == 32 and record.resume
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["epoch"] == 2  # the third epoch (0-based) was trained
    assert last["global_step"] == 3 * (1078 // 32)
    changed = _train([*logs, "resume=true", "loss=cosface"], tmp_path)
    assert changed.returncode == 2 and "a resumed run keeps its config groups" in changed.stderr
