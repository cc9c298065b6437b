from __future__ import annotations

import io
import math

import pytest
import torch

from regprune.graph.groups import ChannelGroup, ParamSlice
from regprune.regularizers import GroupLasso
from tests.regularizers.tiny import Tiny

# Squared norm of each channel over every slice, term by term:
#   conv1 row + conv1 bias^2 + bn gamma^2 + bn beta^2 + conv2 column
SQUARED = [
    9 + 0.25 + 1 + 0.01 + 1.8,
    0 + 0 + 0.25 + 0.04 + 1.65,
    25 + 0 + 0 + 0.09 + 1.6,
    3 + 0.25 + 4 + 0 + 1.65,
]


def test_channel_norms_span_every_coupled_parameter(tiny: Tiny, group: ChannelGroup):
    norms = GroupLasso([group], lam=1.0).channel_norms(tiny)
    assert list(norms) == [0]
    assert torch.allclose(norms[0], torch.tensor(SQUARED).sqrt())
    assert not norms[0].requires_grad


def test_penalty_value(tiny: Tiny, group: ChannelGroup):
    eps = 1e-2
    value = GroupLasso([group], lam=0.5, eps=eps).penalty(tiny)
    assert value.item() == pytest.approx(0.5 * sum(math.sqrt(sq + eps) for sq in SQUARED))


def test_penalty_gradient_is_lam_w_over_channel_norm(tiny: Tiny, group: ChannelGroup):
    lam, eps = 0.5, 1e-8
    GroupLasso([group], lam=lam, eps=eps).penalty(tiny).backward()
    scale = lam / torch.tensor(SQUARED).add(eps).sqrt()  # per channel
    conv1 = tiny.conv1.weight.detach()
    assert torch.allclose(tiny.conv1.weight.grad, conv1 * scale[:, None, None, None])
    assert torch.allclose(tiny.bn.bias.grad, tiny.bn.bias.detach() * scale)
    conv2 = tiny.conv2.weight.detach()
    assert torch.allclose(tiny.conv2.weight.grad, conv2 * scale[None, :, None, None])


def test_a_zero_channel_has_a_finite_zero_gradient(tiny: Tiny, group: ChannelGroup):
    with torch.no_grad():
        tiny.bn.weight[1] = 0.0
        tiny.bn.bias[1] = 0.0
        tiny.conv2.weight[:, 1] = 0.0
    eps = 1e-8
    value = GroupLasso([group], lam=1.0, eps=eps).penalty(tiny)
    others = [SQUARED[0], SQUARED[2], SQUARED[3]]
    assert value.item() == pytest.approx(sum(math.sqrt(s + eps) for s in others) + math.sqrt(eps))
    value.backward()
    for param in (tiny.conv1.weight, tiny.bn.weight, tiny.conv2.weight):
        assert torch.isfinite(param.grad).all()
    assert tiny.bn.weight.grad[1].item() == 0.0
    assert not tiny.conv2.weight.grad[:, 1].any()


def test_concat_consumer_is_split_between_groups(tiny: Tiny):
    # conv2 reads a concat of two 2-channel groups: entries of the other group are -1.
    first = ChannelGroup(
        id=0, size=2, slices=[ParamSlice("conv2", "weight", 1, "in", torch.tensor([0, 1, -1, -1]))]
    )
    second = ChannelGroup(
        id=1, size=2, slices=[ParamSlice("conv2", "weight", 1, "in", torch.tensor([-1, -1, 1, 0]))]
    )
    norms = GroupLasso([first, second], lam=1.0).channel_norms(tiny)
    assert torch.allclose(norms[0], torch.tensor([1.8, 1.65]).sqrt())
    assert torch.allclose(norms[1], torch.tensor([1.65, 1.6]).sqrt())


def test_buffers_are_not_weights(tiny: Tiny, group: ChannelGroup):
    every = torch.arange(4)
    with_stats = ChannelGroup(
        id=0,
        size=4,
        slices=[*group.slices, ParamSlice("bn", "running_var", 0, "norm", every)],
    )
    norms = GroupLasso([with_stats], lam=1.0).channel_norms(tiny)
    assert torch.allclose(norms[0], torch.tensor(SQUARED).sqrt())


def test_a_slice_that_does_not_fit_the_model_is_an_error(tiny: Tiny):
    wrong = ChannelGroup(
        id=0, size=3, slices=[ParamSlice("conv1", "weight", 0, "out", torch.arange(3))]
    )
    with pytest.raises(ValueError, match="shape"):
        GroupLasso([wrong], lam=1.0).penalty(tiny)
    # channel 3 does not exist in a group of size 2
    too_big = ParamSlice("bn", "bias", 0, "norm", torch.arange(4))
    with pytest.raises(ValueError, match="channel_of"):
        GroupLasso([ChannelGroup(id=0, size=2, slices=[too_big])], lam=1.0)


def test_state_dict(group: ChannelGroup):
    reg = GroupLasso([group], lam=0.25)
    buffer = io.BytesIO()
    torch.save(reg.state_dict(), buffer)
    buffer.seek(0)
    other = GroupLasso([group], lam=1.0)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert other.lam == 0.25
