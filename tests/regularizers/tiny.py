"""A conv(3->4) -> BN(4) -> ReLU -> conv(4->5) model with hand-picked weights and its one group.

The weights are small integers and halves so that the expected values in the tests can be
worked out by hand; every test file derives its numbers from the tables below.
"""

from __future__ import annotations

import torch
from torch import nn

from regprune.graph.groups import ChannelGroup, ParamSlice

# conv1.weight[c, :, 0, 0]; channel 1 is all zero.
CONV1_WEIGHT = [[1.0, 2.0, 2.0], [0.0, 0.0, 0.0], [3.0, 0.0, 4.0], [-1.0, -1.0, 1.0]]
CONV1_BIAS = [0.5, 0.0, 0.0, -0.5]
BN_WEIGHT = [1.0, -0.5, 0.0, 2.0]
BN_BIAS = [0.1, 0.2, -0.3, 0.0]
# conv2.weight[o, c, 0, 0] = (4 * o + c) / 10 - 1
CONV2_WEIGHT = [[(4 * o + c) / 10 - 1 for c in range(4)] for o in range(5)]


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 5, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.bn(self.conv1(x))))


def make_tiny() -> Tiny:
    model = Tiny()
    with torch.no_grad():
        model.conv1.weight.copy_(torch.tensor(CONV1_WEIGHT)[:, :, None, None])
        model.conv1.bias.copy_(torch.tensor(CONV1_BIAS))
        model.bn.weight.copy_(torch.tensor(BN_WEIGHT))
        model.bn.bias.copy_(torch.tensor(BN_BIAS))
        model.conv2.weight.copy_(torch.tensor(CONV2_WEIGHT)[:, :, None, None])
    return model


def make_group(group_id: int = 0) -> ChannelGroup:
    """The group of conv1's four output channels, built by hand as the tracer would."""
    every = torch.arange(4)
    return ChannelGroup(
        id=group_id,
        size=4,
        slices=[
            ParamSlice("conv1", "weight", 0, "out", every),
            ParamSlice("conv1", "bias", 0, "out", every),
            ParamSlice("bn", "weight", 0, "norm", every),
            ParamSlice("bn", "bias", 0, "norm", every),
            ParamSlice("conv2", "weight", 1, "in", every),
        ],
        producers=["conv1"],
    )


def zero_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
