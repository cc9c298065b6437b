"""Random architectures for property tests: a small "program" of blocks, built into a module.

A :class:`Program` is plain data (hashable, printable), so hypothesis can shrink a failing
architecture to a minimal one and print it; :func:`build` turns it into a real ``nn.Module``
with randomized norm statistics. Every block maps an ``(N, C, H, W)`` tensor to another one and
exercises one coupling the engine must handle (residual adds, concats, grouped and depthwise
convs, fixed-position splits, gates, GroupNorm/LayerNorm, PReLU, attention over tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

from tests.zoo import randomize_norms

KINDS = (
    "conv",
    "residual",
    "concat",
    "depthwise",
    "grouped",
    "split",
    "se",
    "groupnorm",
    "layernorm",
    "prelu",
    "attention",
)

MIN_WIDTH, MAX_WIDTH = 4, 24


@dataclass(frozen=True)
class Block:
    """One block. ``width`` is the block's output width; ``arg``/``flag`` depend on ``kind``.

    conv: arg = stride. residual: flag = 1x1 projection on the shortcut. concat: arg = width
    of the first branch. depthwise: arg = channel multiplier. grouped / groupnorm: arg = groups.
    split: arg = half width, flag = chunk (True) or slicing (False). se: arg = reduced width.
    prelu: flag = one slope per channel. attention: arg = heads.
    """

    kind: str
    width: int
    arg: int = 0
    flag: bool = False


@dataclass(frozen=True)
class Program:
    in_channels: int
    size: int
    blocks: tuple[Block, ...]
    hidden: int  # width of the optional hidden linear layer of the head; 0 = none
    num_classes: int
    seed: int

    def example_input(self, batch: int = 2) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + 1)
        return torch.randn(batch, self.in_channels, self.size, self.size, generator=generator)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def blocks(draw: st.DrawFn, width: int, kind: str) -> Block:
    """One block of ``kind`` reading ``width`` channels."""
    any_width = st.integers(MIN_WIDTH, MAX_WIDTH)
    if kind == "conv":
        return Block(kind, draw(any_width), arg=draw(st.sampled_from([1, 1, 2])))
    if kind == "residual":
        projection = draw(st.booleans())
        return Block(kind, draw(any_width) if projection else width, flag=projection)
    if kind == "concat":
        first = draw(st.integers(2, MAX_WIDTH // 2))
        return Block(kind, first + draw(st.integers(2, MAX_WIDTH // 2)), arg=first)
    if kind == "depthwise":
        multiplier = draw(st.sampled_from([1, 1, 2]))
        return Block(kind, width * multiplier, arg=multiplier)
    if kind in ("grouped", "groupnorm"):
        groups = draw(st.sampled_from([d for d in _divisors(width) if d > 1] or [1]))
        per_group = draw(st.integers(max(1, MIN_WIDTH // groups), max(1, MAX_WIDTH // groups)))
        return Block(kind, groups * per_group, arg=groups)
    if kind == "split":
        half = draw(st.integers(2, MAX_WIDTH // 2))
        return Block(
            kind, draw(st.integers(2, MAX_WIDTH // 2)) + half, arg=half, flag=draw(st.booleans())
        )
    if kind == "se":
        return Block(kind, width, arg=draw(st.integers(1, max(1, width // 2))))
    if kind == "prelu":
        return Block(kind, draw(any_width), flag=draw(st.booleans()))
    if kind == "attention":
        return Block(
            kind, width, arg=draw(st.sampled_from([d for d in _divisors(width) if d <= 4]))
        )
    if kind == "layernorm":
        return Block(kind, draw(any_width))
    raise AssertionError(kind)


@st.composite
def programs(draw: st.DrawFn, max_blocks: int = 5) -> Program:
    """A random architecture: 1 to ``max_blocks`` blocks, then a pooled linear head."""
    in_channels = draw(st.integers(1, 4))
    size = draw(st.integers(8, 16))
    width = in_channels
    chosen = []
    for _ in range(draw(st.integers(1, max_blocks))):
        kind = draw(st.sampled_from(KINDS))
        block = draw(blocks(width, kind))
        chosen.append(block)
        width = block.width
    hidden = draw(st.sampled_from([0, 0, *range(MIN_WIDTH, MAX_WIDTH + 1, 4)]))
    return Program(
        in_channels,
        size,
        tuple(chosen),
        hidden,
        num_classes=draw(st.integers(2, 10)),
        seed=draw(st.integers(0, 2**16)),
    )


def _conv_bn(
    cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout))


class ConvBlock(nn.Module):
    def __init__(self, cin: int, block: Block) -> None:
        super().__init__()
        self.body = _conv_bn(cin, block.width, stride=block.arg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x))


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, block: Block) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, block.width)
        self.conv2 = _conv_bn(block.width, block.width)
        needs_projection = block.flag or cin != block.width
        self.shortcut = _conv_bn(cin, block.width, kernel=1) if needs_projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class ConcatBlock(nn.Module):
    def __init__(self, cin: int, block: Block) -> None:
        super().__init__()
        self.left = _conv_bn(cin, block.arg)
        self.right = nn.Conv2d(cin, block.width - block.arg, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(torch.cat([self.left(x), self.right(x)], dim=1))


class DepthwiseBlock(nn.Module):
    def __init__(self, cin: int, block: Block) -> None:
        super().__init__()
        self.body = _conv_bn(cin, block.width, groups=cin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.body(x))


class GroupedBlock(nn.Module):
    def __init__(self, cin: int, block: Block) -> None:
        super().__init__()
        self.body = _conv_bn(cin, block.width, groups=block.arg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x))


class SplitBlock(nn.Module):
    """Expand to two halves, transform one of them, concatenate back (ShuffleNet/GhostNet)."""

    def __init__(self, cin: int, block: Block) -> None:
        super().__init__()
        self.half = block.arg
        self.chunk = block.flag
        self.expand = _conv_bn(cin, 2 * block.arg, kernel=1)
        self.branch = nn.Conv2d(block.arg, block.width - block.arg, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.expand(x))
        if self.chunk:
            left, right = torch.chunk(y, 2, dim=1)
        else:
            left, right = y[:, : self.half], y[:, self.half :]
        return torch.cat([self.branch(left), right], dim=1)


class SEBlock(nn.Module):
    def __init__(self, cin: int, block: Block) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, block.arg, 1)
        self.excite = nn.Conv2d(block.arg, cin, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.excite(F.relu(self.squeeze(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class GroupNormBlock(nn.Module):
    def __init__(self, cin: int, block: Block) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, block.width, 3, padding=1)
        self.norm = nn.GroupNorm(block.arg, block.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.norm(self.conv(x)))


class LayerNormBlock(nn.Module):
    """ConvNeXt-style LayerNorm over channels: channels-last, normalize, back."""

    def __init__(self, cin: int, block: Block) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, block.width, 3, padding=1)
        self.norm = nn.LayerNorm(block.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return F.gelu(y)


class PReLUBlock(nn.Module):
    def __init__(self, cin: int, block: Block) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, block.width, 3, padding=1)
        self.act = nn.PReLU(block.width if block.flag else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the spatial positions as tokens, with a residual add."""

    def __init__(self, cin: int, block: Block) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(cin, block.arg, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)
        mixed = self.attn(tokens, tokens, tokens, need_weights=False)[0]
        return x + mixed.transpose(1, 2).reshape(x.shape)


BLOCK_TYPES: dict[str, type[nn.Module]] = {
    "conv": ConvBlock,
    "residual": ResidualBlock,
    "concat": ConcatBlock,
    "depthwise": DepthwiseBlock,
    "grouped": GroupedBlock,
    "split": SplitBlock,
    "se": SEBlock,
    "groupnorm": GroupNormBlock,
    "layernorm": LayerNormBlock,
    "prelu": PReLUBlock,
    "attention": AttentionBlock,
}


class ProgramNet(nn.Module):
    """The module a :class:`Program` describes (the same class for every program)."""

    def __init__(self, program: Program) -> None:
        super().__init__()
        layers = []
        width = program.in_channels
        for block in program.blocks:
            layers.append(BLOCK_TYPES[block.kind](width, block))
            width = block.width
        self.blocks = nn.Sequential(*layers)
        if program.hidden:
            self.head = nn.Sequential(
                nn.Linear(width, program.hidden),
                nn.ReLU(),
                nn.Linear(program.hidden, program.num_classes),
            )
        else:
            self.head = nn.Linear(width, program.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.blocks(x), 1)
        return self.head(torch.flatten(x, 1))


def build(program: Program) -> nn.Module:
    """The program's model, seeded weights and randomized norm statistics, in eval mode."""
    with torch.random.fork_rng():
        torch.manual_seed(program.seed)
        model = ProgramNet(program)
    return randomize_norms(model, seed=program.seed)
