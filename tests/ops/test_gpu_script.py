"""``benchmarks/gpu.py --tiny``: the GPU script runs end to end (in the interpreter without a GPU).

The full run needs a GPU; this keeps every section of the script (and every kernel entry point
it calls) from rotting. Its correctness rows compare the kernels with float64 chunked torch, so
a "FAIL" verdict fails the test; timings and memory at these sizes mean nothing and are not read.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from tests.helpers.run_if import requires_triton

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
@requires_triton
def test_gpu_script_runs_tiny():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("TRITON_INTERPRET", "1")
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    sections = {line.split()[0] for line in lines[3:] if line.strip()}
    assert {"a", "b", "c", "d", "e", "f"} <= sections, result.stdout
    correctness = [line for line in lines if line.split()[:1] in (["a"], ["c"], ["d"])]
    assert correctness and not [line for line in correctness if "FAIL" in line], result.stdout
