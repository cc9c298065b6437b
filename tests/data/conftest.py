"""Fixtures for the data tests: tiny generated IDX sets and a private cache folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from idx_fixture import make_idx_set


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    """A flat folder of gzipped IDX files, like the Debian package's."""
    return make_idx_set(tmp_path / "idx")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"
