"""Pipeline tests run single-threaded (bit-exact comparisons must not depend on the thread count)
and leave torch's global switches as they found them (every phase reseeds and turns
deterministic kernels on)."""

from __future__ import annotations

import pytest

from tests.pipeline.tiny_run import torch_globals_restored


@pytest.fixture(autouse=True)
def _isolated_torch_globals():
    with torch_globals_restored():
        yield
