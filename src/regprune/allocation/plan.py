"""A Plan: which channels of which groups to remove. Data, not a side effect."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Plan:
    """Channels to drop, per group (group id -> sorted channel indices).

    ``group_sizes`` records the size of every group of the graph the plan was made for, and
    ``model_type`` its model class, so applying a plan to another model fails loudly.
    """

    drop: dict[int, list[int]]
    group_sizes: dict[int, int] = field(default_factory=dict)
    model_type: str = ""

    def num_dropped(self) -> int:
        return sum(len(v) for v in self.drop.values())

    def kept_widths(self) -> dict[int, int]:
        return {gid: size - len(self.drop.get(gid, [])) for gid, size in self.group_sizes.items()}

    def drop_masks(self) -> dict[int, torch.Tensor]:
        """Boolean mask per group, True on the channels to remove (what MaskSparsity penalizes)."""
        masks = {}
        for gid, size in self.group_sizes.items():
            mask = torch.zeros(size, dtype=torch.bool)
            mask[self.drop.get(gid, [])] = True
            masks[gid] = mask
        return masks

    def to_dict(self) -> dict[str, Any]:
        return {
            "drop": {str(k): v for k, v in self.drop.items()},
            "group_sizes": {str(k): v for k, v in self.group_sizes.items()},
            "model_type": self.model_type,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(
            drop={int(k): [int(i) for i in v] for k, v in data["drop"].items()},
            group_sizes={int(k): int(v) for k, v in data.get("group_sizes", {}).items()},
            model_type=str(data.get("model_type", "")),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def __str__(self) -> str:
        widths = self.kept_widths()
        parts = [f"g{gid}: {self.group_sizes[gid]}->{kept}" for gid, kept in widths.items()]
        return (
            f"Plan({self.model_type}, drop {self.num_dropped()} channels; " + ", ".join(parts) + ")"
        )
