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


@dataclass
class LockReason:
    """Why some atoms can never be removed: shown to users in the list of unprunable layers."""

    where: str
    reason: str


@dataclass
class AtomTable:
    """Allocates atoms and collects the coupling edges recorded while tracing."""

    count: int = 0
    _edges_a: list[torch.Tensor] = field(default_factory=list)
    _edges_b: list[torch.Tensor] = field(default_factory=list)
    lock_reasons: list[LockReason] = field(default_factory=list)
    _inexact: list[torch.Tensor] = field(default_factory=list)
    _reason_of: torch.Tensor = field(default_factory=lambda: torch.full((1024,), -1))

    def new(self, n: int) -> torch.Tensor:
        """Allocate ``n`` fresh atoms and return their ids."""
        ids = torch.arange(self.count, self.count + n, dtype=torch.long)
        self.count += n
        if self.count > self._reason_of.numel():
            grown = torch.full((max(self.count, 2 * self._reason_of.numel()),), -1)
            grown[: self._reason_of.numel()] = self._reason_of
            self._reason_of = grown
        return ids

    def couple(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Record that ``a[i]`` and ``b[i]`` go together, ignoring positions with no atom."""
        a, b = a.reshape(-1), b.reshape(-1)
        keep = (a >= 0) & (b >= 0) & (a != b)
        if bool(keep.any()):
            # dedupe pairs as one packed int64 key: far faster than unique(dim=1)
            packed = torch.unique(a[keep] * _PACK + b[keep])
            self._edges_a.append(packed // _PACK)
            self._edges_b.append(packed % _PACK)

    def lock(self, atoms: torch.Tensor, where: str, reason: str) -> None:
        """Make the given atoms, and every atom coupled with them, unremovable; remember why.

        Locks are kept as reasons on atoms rather than edges to a sentinel, so that after the
        components are known each locked channel can still say which op locked it.
        """
        atoms = atoms.reshape(-1)
        atoms = atoms[atoms >= 0]
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
            (np.ones(len(a), dtype=np.int8), (a, b)), shape=(self.count, self.count)
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
