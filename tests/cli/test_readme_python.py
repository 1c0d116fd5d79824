"""The README's "From Python" example gives what `python train.py` (the digits default) gives."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _python_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### From Python") :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.mark.slow
def test_the_readme_python_example_reproduces_the_default_run(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = [sys.executable, str(ROOT / "train.py"), "logger=none", f"hydra.run.dir={tmp_path}/run"]
    trained = subprocess.run(run, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    example = subprocess.run(
        [sys.executable, "-c", _python_example()],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert example.returncode == 0, example.stderr[-3000:]
    precision, map_at_r = (float(v) for v in example.stdout.strip().splitlines()[-1].split())
    assert precision == pytest.approx(metrics["test/precision@1"], abs=1e-6)
    assert map_at_r == pytest.approx(metrics["test/map@r"], abs=1e-6)
    # ... and the numbers the README prints beside it.
    assert (round(precision, 3), round(map_at_r, 3)) == (0.983, 0.631)
