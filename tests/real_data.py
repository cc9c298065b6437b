"""The one switch for tests on real data (Debian's Fashion-MNIST).

Outside CI a developer without the package gets skips; under CI (``CI=true``, set by the CI
runner) the tests never skip, so a CI whose data could not be installed fails instead of
passing with its real-data tests silently skipped.
"""

from __future__ import annotations

import os

import pytest

from regprune.data.sources import DEBIAN_FASHION_MNIST_DIR

IN_CI = os.environ.get("CI", "").lower() == "true"
HAS_FASHION_MNIST = DEBIAN_FASHION_MNIST_DIR.is_dir()


def skips_real_data(has_data: bool, in_ci: bool) -> bool:
    """Whether real-data tests skip: only without the data and outside CI."""
    return not has_data and not in_ci


needs_fashion_mnist = pytest.mark.skipif(
    skips_real_data(HAS_FASHION_MNIST, IN_CI),
    reason="apt-get install -y dataset-fashion-mnist (CI installs it and never skips these)",
)
