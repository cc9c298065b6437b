"""Derive independent seeds from a run seed and a purpose.

Why not ``seed + epoch``: with plain addition, (seed=0, epoch=1) and (seed=1, epoch=0) produce the
same stream, so two "different" runs share their shuffling. ``numpy.random.SeedSequence`` hashes the
whole tuple, so every (seed, purpose, epoch, ...) gets its own well-mixed stream.
"""

from __future__ import annotations

import numpy as np


def derive_seed(*values: int) -> int:
    """Return a 63-bit seed that depends on every value, in order.

    Args:
        values: non-negative integers, e.g. ``(run_seed, epoch)``.

    Returns:
        A non-negative int usable by ``torch.Generator.manual_seed``.

    Example:
        >>> derive_seed(0, 1) != derive_seed(1, 0)
        True
    """
    state = np.random.SeedSequence(list(values)).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1
