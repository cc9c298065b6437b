"""Shared fixtures: tiny real models and helpers used across the test suite."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("REGPRUNE_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
