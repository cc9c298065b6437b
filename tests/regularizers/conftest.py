"""Fixtures of the regularizer tests: the tiny model of :mod:`tests.regularizers.tiny`."""

from __future__ import annotations

import pytest

from regprune.graph.groups import ChannelGroup
from tests.regularizers.tiny import Tiny, make_group, make_tiny


@pytest.fixture
def tiny() -> Tiny:
    return make_tiny()


@pytest.fixture
def group() -> ChannelGroup:
    return make_group()
