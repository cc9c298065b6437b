"""Atoms: the smallest units the tracer reasons about, and the coupling between them.

Every output channel of a producing layer (a conv filter, a linear row) and every element of a
parameter used directly in the forward gets an integer id, an *atom*. Tracing records which atoms
must go together (an ``add`` pairs channel k of both operands), which can never go (a model output,
a fixed-size reshape) and which can go only approximately (a LayerNorm sees the channel count).
After tracing, the connected components of the coupling edges are the removable channels.

Why edges plus one connected-components pass instead of a live union-find: tracing emits edges in
large vectorized batches (one per op), and ``scipy.sparse.csgraph`` solves them all at once in C;
a Python union-find would loop per element and make big models slow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

NO_ATOM = -1
"""Label of a value that depends on no removable channel (inputs, constants)."""

_PACK = 1 << 31


def unexpanded(label: torch.Tensor) -> torch.Tensor:
    """The label with every broadcast dim (stride 0) narrowed to size 1: a view, no copy.

    Labels are replayed through data movement at the activation's full shape as broadcast
    views; looking at what they hold, not at every position, keeps each check as small as the
    structure."""
    for dim in range(label.dim()):
        if label.stride(dim) == 0 and label.size(dim) > 1:
            label = label.narrow(dim, 0, 1)
    return label


@dataclass
class LockReason:
    """Why some atoms can never be removed: shown to users in the list of unprunable layers."""

    where: str
    reason: str


@dataclass
class FixedDimCheck:
    """A dim of a label that must never shrink: checked once the components are known.

    Why deferred: whether a dim can shrink depends on how its atoms end up coupled, which is
    known only after the whole forward (a head_dim written as a literal in a ``view`` is fine when
    whole heads are the unit, and must lock when head_dim positions are). Tracing records the
    requirement; :meth:`AtomTable.check_fixed_dims` locks the atoms where it does not hold.
    """

    label: torch.Tensor
    dim: int
    where: str
    reason: str


_SORT_BELOW = 4096
"""Below this many entries ``torch.unique`` is as fast as counting atom ids, and deduplicating
coupled pairs costs more than keeping their repeats."""


def atoms_in(label: torch.Tensor) -> torch.Tensor:
    """The distinct atoms a label refers to, in increasing order.

    A count per atom id rather than ``torch.unique`` or a mask (our choice): labels of attention
    scores reach millions of entries, mostly a few atoms; ``bincount`` reads them in one linear
    pass, several times faster than selecting the valid entries and marking them
    (``python -m benchmarks.engine_parts``, on a 10 M-entry label shaped as MViT-v2-S's)."""
    label = unexpanded(label).reshape(-1)
    if label.numel() < _SORT_BELOW:
        return torch.unique(label[label >= 0])
    counts = torch.bincount(label + 1)  # -1 (no atom) lands in bin 0
    return counts[1:].nonzero().reshape(-1)


@dataclass
class AtomTable:
    """Allocates atoms and collects the coupling edges recorded while tracing."""

    count: int = 0
    _edges_a: list[torch.Tensor] = field(default_factory=list)
    _edges_b: list[torch.Tensor] = field(default_factory=list)
    lock_reasons: list[LockReason] = field(default_factory=list)
    _inexact: list[torch.Tensor] = field(default_factory=list)
    _reason_of: torch.Tensor = field(default_factory=lambda: torch.full((1024,), -1))
    _fixed_dims: list[FixedDimCheck] = field(default_factory=list)
    _split: torch.Tensor = field(default_factory=lambda: torch.zeros(1024, dtype=torch.bool))

    def new(self, n: int) -> torch.Tensor:
        """Allocate ``n`` fresh atoms and return their ids."""
        ids = torch.arange(self.count, self.count + n, dtype=torch.long)
        self.count += n
        if self.count > self._reason_of.numel():
            grown = torch.full((max(self.count, 2 * self._reason_of.numel()),), -1)
            grown[: self._reason_of.numel()] = self._reason_of
            self._reason_of = grown
            split = torch.zeros(grown.numel(), dtype=torch.bool)
            split[: self._split.numel()] = self._split
            self._split = split
        return ids

    def couple(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Record that ``a[i]`` and ``b[i]`` go together, ignoring positions with no atom."""
        a, b = a.reshape(-1), b.reshape(-1)
        keep = (a >= 0) & (b >= 0) & (a != b)
        if bool(keep.any()):
            a, b = a[keep], b[keep]
            if a.numel() >= _SORT_BELOW:
                # dedupe many pairs (attention labels repeat a pair per position) as one
                # packed int64 key: far faster than unique(dim=1). A few pairs are kept as
                # they are: unique costs more than their repeats, which components() ignores
                packed = torch.unique(a * _PACK + b)
                a, b = packed // _PACK, packed % _PACK
            self._edges_a.append(a)
            self._edges_b.append(b)

    def lock(self, atoms: torch.Tensor, where: str, reason: str) -> None:
        """Make the given atoms, and every atom coupled with them, unremovable; remember why.

        Locks are kept as reasons on atoms rather than edges to a sentinel, so that after the
        components are known each locked channel can still say which op locked it.
        """
        atoms = atoms_in(atoms)
        if atoms.numel():
            # a scatter, not a sort: the first reason given for an atom is the one reported
            fresh = atoms[self._reason_of[atoms] < 0]
            if fresh.numel():
                self._reason_of[fresh] = len(self.lock_reasons)
                self.lock_reasons.append(LockReason(where, reason))

    def new_locked(self, where: str, reason: str) -> torch.Tensor:
        """One fresh atom, locked: the label of values the tracer cannot follow."""
        atom = self.new(1)
        self.lock(atom, where, reason)
        return atom

    def mark_split(self, atoms: torch.Tensor) -> None:
        """These atoms were reshaped into a grid (heads x head_dim)."""
        atoms = atoms[atoms >= 0]
        self._split[atoms] = True

    def is_split(self, atoms: torch.Tensor) -> bool:
        """Whether any of these atoms was reshaped into a grid."""
        atoms = atoms[atoms >= 0]
        return bool(self._split[atoms].any())

    def require_fixed(self, label: torch.Tensor, dim: int, where: str, reason: str) -> None:
        """Require that removing channels never shrinks ``dim`` of ``label``: every slice along
        it must hold the same channels, position by position (a head_dim given as a literal,
        the q/k/v dim of a packed projection selected by ``unbind``)."""
        if label.dim() and label.size(dim) > 1 and bool((label >= 0).any()):
            self._fixed_dims.append(FixedDimCheck(label, dim, where, reason))

    def check_fixed_dims(self, component: torch.Tensor) -> None:
        """Lock the atoms of every label whose required-fixed dim would shrink."""
        for check in self._fixed_dims:
            label = check.label
            comps = torch.where(label >= 0, component[label.clamp(min=0)], -1)
            first = comps.narrow(check.dim, 0, 1).expand_as(comps)
            if not bool((comps == first).all()):
                self.lock(label, check.where, check.reason)

    def mark_inexact(self, atoms: torch.Tensor) -> None:
        """Removing these atoms changes the output even when they are zero (LayerNorm, mean)."""
        atoms = torch.unique(atoms[atoms >= 0])
        if atoms.numel():
            self._inexact.append(atoms)

    def components(self) -> torch.Tensor:
        """Connected component id of every atom: the removable channels."""
        if self._edges_a:
            a = torch.cat(self._edges_a).numpy()
            b = torch.cat(self._edges_b).numpy()
        else:
            a = b = np.zeros(0, dtype=np.int64)
        adjacency = coo_matrix(
            (np.ones(len(a), dtype=np.int32), (a, b)), shape=(self.count, self.count)
        )
        _, labels = connected_components(adjacency, directed=False)
        return torch.from_numpy(labels.astype(np.int64))

    def reason_of_atoms(self) -> torch.Tensor:
        """Index into :attr:`lock_reasons` for every atom, -1 for atoms never locked."""
        return self._reason_of[: self.count]

    def inexact_atoms(self) -> torch.Tensor:
        if not self._inexact:
            return torch.zeros(0, dtype=torch.long)
        return torch.unique(torch.cat(self._inexact))
