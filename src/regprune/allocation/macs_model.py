"""MACs of a pruned model as a function of the kept channels, without building it.

Budget search evaluates many candidate plans; building and counting each would cost a deep copy
and a forward pass. Each traced layer's MACs are ``unit * in_kept * out_kept / groups_kept``
(plus ``out_unit * out_kept`` for what its outputs cost alone: the attention matmuls of an
``nn.MultiheadAttention``'s heads), so one vectorized pass over the layers' atoms gives the MACs
of any keep mask.
"""

from __future__ import annotations

import torch

from regprune.graph.dependency import DependencyGraph


class MacsModel:
    """Analytic MACs of the traced layers plus a constant for everything else.

    Args:
        graph: the traced model's graph.
        measured_total_macs: MACs of the unpruned model as counted by :func:`regprune.count`;
            the difference to the traced layers (attention matmuls ...) is kept constant.
    """

    def __init__(self, graph: DependencyGraph, measured_total_macs: float | None = None) -> None:
        self.graph = graph
        records = graph.records
        self.unit = torch.tensor([r.macs_unit for r in records], dtype=torch.float64)
        self.out_unit = torch.tensor([r.out_macs_unit for r in records], dtype=torch.float64)
        self.groups = torch.tensor([r.groups for r in records], dtype=torch.float64)
        self.out_total = torch.tensor([r.out_atoms.numel() for r in records], dtype=torch.float64)
        self.in_record = torch.cat(
            [torch.full((r.in_atoms.numel(),), i, dtype=torch.long) for i, r in enumerate(records)]
            or [torch.zeros(0, dtype=torch.long)]
        )
        self.out_record = torch.cat(
            [torch.full((r.out_atoms.numel(),), i, dtype=torch.long) for i, r in enumerate(records)]
            or [torch.zeros(0, dtype=torch.long)]
        )
        in_atoms = torch.cat([r.in_atoms for r in records] or [torch.zeros(0, dtype=torch.long)])
        out_atoms = torch.cat([r.out_atoms for r in records] or [torch.zeros(0, dtype=torch.long)])
        self.in_component = torch.where(in_atoms >= 0, graph.component[in_atoms.clamp(min=0)], -1)
        self.out_component = graph.component[out_atoms]
        full = torch.ones(graph.group_of_component.numel(), dtype=torch.bool)
        self.traced_full = self._traced(full)
        self.other = 0.0 if measured_total_macs is None else measured_total_macs - self.traced_full

    def _traced(self, keep: torch.Tensor) -> float:
        n = len(self.graph.records)
        in_kept_atoms = (self.in_component < 0) | keep[self.in_component.clamp(min=0)]
        in_kept = torch.zeros(n, dtype=torch.float64).index_add_(
            0, self.in_record, in_kept_atoms.double()
        )
        out_kept = torch.zeros(n, dtype=torch.float64).index_add_(
            0, self.out_record, keep[self.out_component].double()
        )
        grouped = self.groups > 1
        per_layer = torch.where(
            grouped,
            in_kept * self.out_total / self.groups * (out_kept > 0),
            in_kept * out_kept,
        )
        return float((per_layer * self.unit + out_kept * self.out_unit).sum())

    def expected(self, keep_prob: torch.Tensor) -> torch.Tensor:
        """Expected MACs when each component is kept with probability ``keep_prob`` (float64,
        one per component), differentiable in it: the L0 gates' MACs constraint.

        A layer's expected MACs take its inputs and outputs as independent (they are different
        groups' gates, except a depthwise layer's, whose MACs are linear in its kept channels
        anyway); a grouped layer costs ``in_kept * out_total / groups`` as in :meth:`macs`.
        """
        n = len(self.graph.records)
        unread = self.in_component < 0
        in_p = torch.where(unread, 1.0, keep_prob[self.in_component.clamp(min=0)])
        in_kept = keep_prob.new_zeros(n).index_add(0, self.in_record, in_p)
        out_kept = keep_prob.new_zeros(n).index_add(
            0, self.out_record, keep_prob[self.out_component]
        )
        grouped = self.groups > 1
        per_layer = torch.where(grouped, in_kept * self.out_total / self.groups, in_kept * out_kept)
        return (per_layer * self.unit + out_kept * self.out_unit).sum() + self.other

    def macs(self, keep: torch.Tensor) -> float:
        """Total MACs with ``keep`` (bool per component) applied."""
        return self._traced(keep) + self.other

    @property
    def total(self) -> float:
        return self.traced_full + self.other
