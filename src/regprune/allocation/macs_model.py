"""MACs of a pruned model as a function of the kept channels, without building it.

Budget search evaluates many candidate plans; building and counting each would cost a deep copy
and a forward pass. Each traced layer's MACs are ``unit * in_kept * out_kept / groups_kept``
(a grouped conv that loses channels inside its groups keeps its group count), plus
``out_unit * out_kept`` for what its outputs cost alone (the attention matmuls of an
``nn.MultiheadAttention``'s heads), so one vectorized pass over the layers' atoms gives the MACs
of any keep mask. Products between activations (``q k^T`` and ``attn v`` written with ``matmul``
or inside ``F.scaled_dot_product_attention``) cost ``unit`` per kept position of their grid of
heads / head_dim / contracted positions (``graph.products``), so removed heads are credited with
their attention matmuls too.
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
        self.whole_groups = torch.tensor(
            [r.groups > 1 and not r.inside_groups for r in records], dtype=torch.bool
        )
        """Grouped layers that lose whole groups (the others keep their group count)."""
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
        products = graph.products
        empty = torch.zeros(0, dtype=torch.long)
        self.product_unit = torch.cat(
            [torch.full((p.a_atoms.numel(),), p.macs_unit, dtype=torch.float64) for p in products]
            or [torch.zeros(0, dtype=torch.float64)]
        )
        self.product_a = self._components(torch.cat([p.a_atoms for p in products] or [empty]))
        self.product_b = self._components(torch.cat([p.b_atoms for p in products] or [empty]))
        full = torch.ones(graph.group_of_component.numel(), dtype=torch.bool)
        self.traced_full = self._traced(full)
        self.other = 0.0 if measured_total_macs is None else measured_total_macs - self.traced_full

    def _components(self, atoms: torch.Tensor) -> torch.Tensor:
        """Component of each atom, -1 where there is none."""
        return torch.where(atoms >= 0, self.graph.component[atoms.clamp(min=0)], -1)

    def _product_macs(self, keep: torch.Tensor) -> torch.Tensor:
        kept = torch.ones_like(self.product_unit, dtype=torch.bool)
        for component in (self.product_a, self.product_b):
            kept &= (component < 0) | keep[component.clamp(min=0)]
        return (self.product_unit * kept).sum()

    def _traced(self, keep: torch.Tensor) -> float:
        n = len(self.graph.records)
        in_kept_atoms = (self.in_component < 0) | keep[self.in_component.clamp(min=0)]
        in_kept = torch.zeros(n, dtype=torch.float64).index_add_(
            0, self.in_record, in_kept_atoms.double()
        )
        out_kept = torch.zeros(n, dtype=torch.float64).index_add_(
            0, self.out_record, keep[self.out_component].double()
        )
        per_layer = torch.where(
            self.whole_groups,
            in_kept * self.out_total / self.groups * (out_kept > 0),
            in_kept * out_kept / torch.where(self.whole_groups, 1.0, self.groups),
        )
        layers = (per_layer * self.unit + out_kept * self.out_unit).sum()
        return float(layers + self._product_macs(keep))

    def expected(self, keep_prob: torch.Tensor) -> torch.Tensor:
        """Expected MACs when each component is kept with probability ``keep_prob`` (float64,
        one per component), differentiable in it: the L0 gates' MACs constraint.

        A layer's expected MACs take its inputs and outputs as independent (they are different
        groups' gates, except a depthwise layer's, whose MACs are linear in its kept channels
        anyway); a layer losing whole groups costs ``in_kept * out_total / groups`` as in
        :meth:`macs`.
        """
        n = len(self.graph.records)
        unread = self.in_component < 0
        in_p = torch.where(unread, 1.0, keep_prob[self.in_component.clamp(min=0)])
        in_kept = keep_prob.new_zeros(n).index_add(0, self.in_record, in_p)
        out_kept = keep_prob.new_zeros(n).index_add(
            0, self.out_record, keep_prob[self.out_component]
        )
        per_layer = torch.where(
            self.whole_groups,
            in_kept * self.out_total / self.groups,
            in_kept * out_kept / torch.where(self.whole_groups, 1.0, self.groups),
        )
        # a product's two operands are mostly one component (coupled heads): kept together
        a, b = self.product_a, self.product_b
        p_a = torch.where(a < 0, 1.0, keep_prob[a.clamp(min=0)])
        p_b = torch.where((b < 0) | (b == a), 1.0, keep_prob[b.clamp(min=0)])
        products = (self.product_unit * p_a * p_b).sum()
        return (per_layer * self.unit + out_kept * self.out_unit).sum() + products + self.other

    def macs(self, keep: torch.Tensor) -> float:
        """Total MACs with ``keep`` (bool per component) applied."""
        return self._traced(keep) + self.other

    @property
    def total(self) -> float:
        return self.traced_full + self.other
