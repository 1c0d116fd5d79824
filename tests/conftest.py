"""Shared pytest fixtures and settings."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU the Triton kernels are tested in the interpreter, which runs them on CPU tensors.
# Triton fixes the mode when it is first imported (Lightning and torch._dynamo import it), so it
# is set here, before any test module is collected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Keep the suite quick and deterministic on 2 CPU cores.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
