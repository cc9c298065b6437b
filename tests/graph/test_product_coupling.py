"""The coupling of a product's contracted dim, checked against its definition.

``(..., M, K) @ (..., K, N)``: every atom at position k of the left operand goes with every atom
at position k of the right one, per batch index. The tracer couples each side with one atom of
the other side's set instead of every (m, k, n) pair (that grid ran MViT's trace out of memory);
the components must be the same.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from regprune.graph.atoms import AtomTable
from regprune.graph.ops import _couple_contracted


def partition(atoms: AtomTable) -> set[frozenset[int]]:
    labels = atoms.components().tolist()
    groups: dict[int, set[int]] = {}
    for atom, component in enumerate(labels):
        groups.setdefault(component, set()).add(atom)
    return {frozenset(g) for g in groups.values()}


def label(draw, shape: tuple[int, ...], atoms: int) -> torch.Tensor:
    """Atom ids in [0, atoms) and -1 (no atom), drawn from a seeded generator."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return torch.randint(-1, atoms, shape, generator=g)


@st.composite
def operands(draw):
    atoms = draw(st.integers(1, 12))
    batch = draw(st.sampled_from([(), (1,), (2,), (1, 3), (2, 3)]))
    m, k, n = (draw(st.integers(1, 4)) for _ in range(3))
    # a batch dim of size 1 on one side broadcasts against the other's, as heads do
    batch_b = tuple(draw(st.sampled_from([size, 1])) for size in batch)
    return atoms, label(draw, (*batch, m, k), atoms), label(draw, (*batch_b, k, n), atoms)


@settings(max_examples=200, deadline=None)
@given(operands())
def test_contracted_dim_couples_as_every_pair_does(case) -> None:
    count, la, lb = case
    ours, pairs = AtomTable(), AtomTable()
    ours.new(count)
    pairs.new(count)
    _couple_contracted(SimpleNamespace(atoms=ours), la, lb)
    a, b = la.unsqueeze(-1), lb.unsqueeze(-3)
    shape = torch.broadcast_shapes(tuple(a.shape), tuple(b.shape))
    pairs.couple(a.expand(shape), b.expand(shape))
    assert partition(ours) == partition(pairs)
