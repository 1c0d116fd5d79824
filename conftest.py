"""Repository-wide pytest set-up (tests/ and the doctests under src/)."""

from __future__ import annotations

import os

import torch

# Without a GPU the Triton kernels are tested in the interpreter, which runs them on CPU tensors.
# Triton fixes the mode when it is first imported (Lightning and torch._dynamo import it), so it
# is set here, before any test module or doctest is collected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
