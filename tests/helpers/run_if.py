"""``RunIf``-style skip markers (after lightning-hydra-template)."""

from __future__ import annotations

import importlib.util

import pytest
import torch


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


requires_triton = pytest.mark.skipif(not has_module("triton"), reason="triton is not installed")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
requires_faiss = pytest.mark.skipif(not has_module("faiss"), reason="faiss is not installed")
requires_matplotlib = pytest.mark.skipif(
    not has_module("matplotlib"), reason="matplotlib is not installed"
)
