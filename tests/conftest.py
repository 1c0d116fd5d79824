"""Shared pytest fixtures and settings."""

from __future__ import annotations

import os

import pytest
import torch

# Keep the suite quick and deterministic on 2 CPU cores.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
