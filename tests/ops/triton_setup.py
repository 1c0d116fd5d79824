"""Where the op tests run marginkit's Triton kernels: on CUDA, else in Triton's interpreter.

Triton fixes the mode when ``@triton.jit`` decorates a kernel, i.e. when ``marginkit.ops._triton``
is first imported, so importing this module sets ``TRITON_INTERPRET=1`` (without a GPU) before it
imports that module (the root ``conftest.py`` sets it earlier still). If something imported
triton before in compiled mode, the tests marked with :data:`TRITON_MARKS` are skipped, saying so.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers.run_if import has_module, requires_triton

if has_module("triton") and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _triton_runnable() -> tuple[bool, str]:
    if not has_module("triton"):
        return False, "triton is not installed"
    from marginkit.ops import _triton

    if torch.cuda.is_available() or _triton.interpreter_enabled():
        return True, ""
    return False, (
        "no CUDA GPU, and marginkit.ops._triton was imported before TRITON_INTERPRET=1 was set "
        "(set it in the environment or in the root conftest.py)"
    )


RUNNABLE, WHY_NOT = _triton_runnable()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

TRITON_MARKS = [
    pytest.mark.triton,
    requires_triton,
    pytest.mark.skipif(not RUNNABLE, reason=WHY_NOT or "triton not runnable"),
    # The interpreter evaluates log(0) on purpose (rows with every column excluded).
    pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning"),
]


def requires_triton_kernels(test):
    """Mark one test with :data:`TRITON_MARKS`."""
    for mark in TRITON_MARKS:
        test = mark(test)
    return test


# Whether the Triton kernels run on CPU tensors (the interpreter; what gloo workers hold), and
# the `impl` values of a test on CPU tensors: the chunked-torch kernels and those.
CPU_TRITON = has_module("triton") and not torch.cuda.is_available()
CPU_IMPLS = [
    None,
    pytest.param(
        "triton",
        marks=[
            pytest.mark.triton,
            pytest.mark.skipif(not CPU_TRITON, reason="triton is not installed"),
        ],
    ),
]
