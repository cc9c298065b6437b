"""Tracing leaves the caller's model as it was: state a forward caches on its modules (a
detection head's anchors and strides, a relative-position index, a rotary table, a stored input
shape) is neither left on the caller's model as meta tensors or stale shapes, nor handed to the
pruned copy."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

import regprune as rp


class DetectLike(nn.Module):
    """Ultralytics' Detect head: anchors and strides rebuilt on the features' device whenever
    the feature shape changes, and the shape kept as a ``torch.Size``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.box = nn.Conv2d(16, 4, 1)
        self.shape: torch.Size | None = None
        self.anchors = torch.empty(0)
        self.strides = torch.empty(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x)
        if self.shape != f.shape:
            h, w = f.shape[-2:]
            ys, xs = torch.meshgrid(
                torch.arange(h, device=f.device, dtype=f.dtype),
                torch.arange(w, device=f.device, dtype=f.dtype),
                indexing="ij",
            )
            self.anchors = torch.stack((xs, ys)).reshape(2, -1)
            self.strides = torch.full((1, h * w), x.shape[-1] / w, device=f.device)
            self.shape = f.shape
        return (self.box(f).flatten(2)[:, :2] + self.anchors) * self.strides


class RelativePosition(nn.Module):
    """Attention with a relative-position index cached per sequence length (a Python int)."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn(63))
        self.index: torch.Tensor | None = None
        self.length = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, dim = x.shape[1:]
        if self.index is None or self.length != n:
            i = torch.arange(n, device=x.device)
            self.index = (i[:, None] - i[None, :]).clamp(-31, 31) + 31
            self.length = n
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        attention = q @ k.transpose(-1, -2) / math.sqrt(dim) + self.table[self.index]
        return self.proj(attention.softmax(-1) @ v)


class Rotary(nn.Module):
    """A rotary sin/cos table built once, on the first call's device, and then reused for any
    shorter sequence: a meta table left behind would break every later call."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.dim = dim
        self.inp = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, 4)
        self.cos: torch.Tensor | None = None
        self.sin: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        if self.cos is None or self.cos.shape[0] < n:
            angle = torch.arange(max(n, 32), device=x.device)[:, None] * torch.linspace(
                0, 1, self.dim // 2, device=x.device
            )
            self.cos, self.sin = angle.cos(), angle.sin()
        h = self.inp(x)
        a, b = h.chunk(2, dim=-1)
        cos, sin = self.cos[:n], self.sin[:n]
        return self.out(torch.relu(torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)))


class CachesThenNeedsValues(nn.Module):
    """Caches a grid on the features' device, then branches on a value: the meta trace fails
    after caching a meta grid, and the real trace that follows must not find it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)
        self.shape: torch.Size | None = None
        self.grid: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x)
        if self.shape != f.shape:
            self.grid = torch.ones(f.shape[-2:], device=f.device)
            self.shape = f.shape
        if x.mean().item() > -1e9:  # no meta kernel for .item(): traced for real
            f = torch.relu(f * self.grid)
        return self.head(f)


Case = Callable[[], tuple[nn.Module, torch.Tensor, torch.Tensor]]
CASES: dict[str, Case] = {
    "detect_head": lambda: (DetectLike(), torch.randn(1, 3, 16, 16), torch.randn(2, 3, 24, 24)),
    "relative_position": lambda: (
        RelativePosition(),
        torch.randn(1, 8, 16),
        torch.randn(2, 12, 16),
    ),
    "rotary": lambda: (Rotary(), torch.randn(1, 8, 16), torch.randn(2, 40, 16)),
    "caches_then_needs_values": lambda: (
        CachesThenNeedsValues(),
        torch.randn(1, 3, 8, 8),
        torch.randn(2, 3, 12, 12),
    ),
}


def cached_state(model: nn.Module) -> dict[str, object]:
    """Every module's non-module attributes, by qualified name (the objects themselves)."""
    return {
        f"{name}.{key}": value
        for name, module in model.named_modules()
        for key, value in vars(module).items()
        if not key.startswith("_") and key != "training"
    }


def meta_tensors(model: nn.Module) -> list[str]:
    return [
        name
        for name, value in cached_state(model).items()
        if isinstance(value, torch.Tensor) and value.is_meta
    ]


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("ran_before", [False, True], ids=["fresh", "ran-at-another-size"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_make_plan_and_prune_leave_the_callers_cache_alone(name: str, ran_before: bool) -> None:
    torch.manual_seed(0)
    model, x, other = CASES[name]()
    model.eval()
    if ran_before:
        outputs(model, other)  # the caller's cache is for another input size
    before = cached_state(model)
    rp.make_plan(model, x, ratio=0.5)
    small = rp.prune(model, x, ratio=0.5)

    after = cached_state(model)
    assert after.keys() == before.keys()
    changed = [key for key, value in before.items() if after[key] is not value]
    assert not changed, f"the forward's cache survived tracing in {changed}"
    assert not meta_tensors(model) and not meta_tensors(small)
    reference = type(model)()
    reference.load_state_dict(model.state_dict())
    for size in (x, other):
        assert torch.equal(outputs(model, size), outputs(reference.eval(), size))
        assert outputs(small, size).shape == outputs(model, size).shape


def test_a_failed_meta_trace_hands_no_meta_cache_to_the_real_trace() -> None:
    model = CachesThenNeedsValues().eval()
    graph = rp.trace_graph(model, torch.randn(1, 3, 8, 8))
    assert [g.size for g in graph.groups] == [8]
    assert model.grid is None and model.shape is None
