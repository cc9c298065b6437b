"""CLI tests run pipeline phases in this process: keep torch's global switches as they were."""

from __future__ import annotations

import pytest

from tests.pipeline.tiny_run import torch_globals_restored


@pytest.fixture(autouse=True)
def _isolated_torch_globals():
    with torch_globals_restored():
        yield
