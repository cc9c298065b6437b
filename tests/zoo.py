"""Small architectures that exercise every coupling the engine must handle.

Each builder returns (model, example_input). They are real modules with randomized BatchNorm
statistics, so an exactness failure cannot hide behind identity normalization.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if (
                isinstance(module, nn.modules.batchnorm._NormBase)
                and module.running_mean is not None
            ):
                module.running_mean.copy_(
                    torch.randn(module.running_mean.shape, generator=generator) * 0.1
                )
                module.running_var.copy_(
                    torch.rand(module.running_var.shape, generator=generator) + 0.5
                )
            weight = getattr(module, "weight", None)
            norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
            if isinstance(module, norm_types) and weight is not None:
                weight.copy_(torch.rand(weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return model.eval()


class ConcatNet(nn.Module):
    """DenseNet/Inception-style concat, split, chunk, flatten -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 1)
        self.bn = nn.BatchNorm2d(14)
        self.c = nn.Conv2d(14, 10, 3, padding=1)
        self.d = nn.Conv2d(5, 4, 1)
        self.fc = nn.Linear(9 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1)))
        z = self.c(y)
        left, right = torch.chunk(z, 2, dim=1)
        w = torch.cat([self.d(left) * 2.0, right[:, :5]], 1)
        w = F.adaptive_avg_pool2d(w, 4)
        return self.fc(torch.flatten(w, 1))


class GroupedNet(nn.Module):
    """Depthwise, grouped (ResNeXt-style) convs, GroupNorm, PReLU, InstanceNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.gn = nn.GroupNorm(4, 16)
        self.act = nn.PReLU(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.grouped = nn.Conv2d(16, 24, 3, padding=1, groups=4)
        self.inorm = nn.InstanceNorm2d(24, affine=True)
        self.head = nn.Conv2d(24, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.gn(self.stem(x)))
        x = F.relu(self.dw(x)) + x
        x = F.relu(self.inorm(self.grouped(x)))
        return self.head(x).mean((2, 3))


class SEBlockNet(nn.Module):
    """Squeeze-excitation gating, a learned per-channel scale and a ConvTranspose."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.squeeze = nn.Conv2d(12, 4, 1)
        self.excite = nn.Conv2d(4, 12, 1)
        self.scale = nn.Parameter(torch.rand(12, 1, 1) + 0.5)
        self.up = nn.ConvTranspose2d(12, 8, 2, stride=2)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        gate = torch.sigmoid(self.excite(F.relu(self.squeeze(x.mean((2, 3), keepdim=True)))))
        x = x * gate * self.scale
        return self.out(F.relu(self.up(x)))


class TokenNet(nn.Module):
    """Embedding, transformer MLP with LayerNorm, multi-head attention, mean-pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        x = x + self.mlp(self.norm(x))
        return self.head(x.sum(1))


class PaddedShortcutNet(nn.Module):
    """ResNet option-A shortcut: subsample and zero-pad channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 4, 4))
        x = F.relu(self.conv(x) + shortcut)
        return self.fc(x.mean((2, 3)))


ZOO: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    "concat": lambda: (ConcatNet(), torch.randn(2, 3, 8, 8)),
    "grouped": lambda: (GroupedNet(), torch.randn(2, 3, 8, 8)),
    "se_block": lambda: (SEBlockNet(), torch.randn(2, 3, 8, 8)),
    "tokens": lambda: (TokenNet(), torch.randint(0, 50, (2, 7))),
    "padded_shortcut": lambda: (PaddedShortcutNet(), torch.randn(2, 3, 8, 8)),
}
