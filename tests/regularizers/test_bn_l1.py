from __future__ import annotations

import io

import pytest
import torch

from regprune.graph.groups import ChannelGroup, ParamSlice
from regprune.regularizers import BNScaleL1
from tests.regularizers.tiny import BN_WEIGHT, Tiny, zero_grads

S = 0.125  # a power of two keeps every expected value exact
# BN_WEIGHT = [1.0, -0.5, 0.0, 2.0]


def test_slimming_adds_s_sign_gamma_to_the_scale_grad_only(tiny: Tiny, group: ChannelGroup):
    zero_grads(tiny)
    BNScaleL1([group], s=S).apply_to_grads(tiny)
    assert tiny.bn.weight.grad.tolist() == [S, -S, 0.0, S]
    for name in ("conv1.weight", "conv1.bias", "bn.bias", "conv2.weight"):
        assert not tiny.get_parameter(name).grad.any(), name


def test_the_edit_lands_in_the_grad_tensor_itself(tiny: Tiny, group: ChannelGroup):
    grad = torch.ones(4)
    tiny.bn.weight.grad = grad
    BNScaleL1([group], s=S).apply_to_grads(tiny)
    assert tiny.bn.weight.grad is grad
    assert grad.tolist() == [1 + S, 1 - S, 1.0, 1 + S]


def test_a_missing_grad_is_created_and_a_frozen_scale_left_alone(tiny: Tiny, group):
    BNScaleL1([group], s=S).apply_to_grads(tiny)
    assert tiny.bn.weight.grad.tolist() == [S, -S, 0.0, S]
    frozen = Tiny()
    frozen.bn.weight.requires_grad_(False)
    BNScaleL1([group], s=S).apply_to_grads(frozen)
    assert frozen.bn.weight.grad is None


def test_masksparsity_penalizes_only_the_masked_channels(tiny: Tiny, group: ChannelGroup):
    zero_grads(tiny)
    mask = {0: torch.tensor([True, True, False, False])}
    BNScaleL1([group], s=S, mask=mask).apply_to_grads(tiny)
    # channel 3 has gamma = 2 but is kept: exactly no penalty
    assert tiny.bn.weight.grad.tolist() == [S, -S, 0.0, 0.0]


@pytest.mark.parametrize(
    ("norm", "expected"),
    [
        ("l1", [S, -S, 0.0, S]),
        ("l2", [S * 1.0, S * -0.5, 0.0, S * 2.0]),
        # beta = 0.6: |gamma| < 0.6 for -0.5 and 0 -> s * gamma, else s * sign(gamma)
        ("smooth_l1", [S, S * -0.5, 0.0, S]),
    ],
)
def test_norm_variants(tiny: Tiny, group: ChannelGroup, norm: str, expected: list[float]):
    zero_grads(tiny)
    BNScaleL1([group], s=S, norm=norm, smooth_l1_beta=0.6).apply_to_grads(tiny)
    assert torch.allclose(tiny.bn.weight.grad, torch.tensor(expected))


@pytest.mark.parametrize("norm", ["l1", "l2", "smooth_l1"])
def test_penalty_gradient_equals_the_gradient_edit(tiny: Tiny, group: ChannelGroup, norm: str):
    mask = {0: torch.tensor([True, False, True, True])}
    reg = BNScaleL1([group], s=S, mask=mask, norm=norm, smooth_l1_beta=0.6)
    zero_grads(tiny)
    reg.apply_to_grads(tiny)
    edited = tiny.bn.weight.grad.clone()
    zero_grads(tiny)
    reg.penalty(tiny).backward()
    assert torch.allclose(tiny.bn.weight.grad, edited)


def test_penalty_values(tiny: Tiny, group: ChannelGroup):
    mask = {0: torch.tensor([True, True, False, True])}
    # masked gammas: 1, -0.5, 2
    l1 = BNScaleL1([group], s=S, mask=mask).penalty(tiny)
    assert l1.item() == pytest.approx(S * (1 + 0.5 + 2))
    l2 = BNScaleL1([group], s=S, mask=mask, norm="l2").penalty(tiny)
    assert l2.item() == pytest.approx(0.5 * S * (1 + 0.25 + 4))
    # beta = 0.6: 1 -> 1 - 0.6 + 0.18, -0.5 -> 0.125, 2 -> 2 - 0.6 + 0.18
    smooth = BNScaleL1([group], s=S, mask=mask, norm="smooth_l1", smooth_l1_beta=0.6)
    assert smooth.penalty(tiny).item() == pytest.approx(S * (0.58 + 0.125 + 1.58))


def test_entries_of_other_groups_are_not_touched(tiny: Tiny):
    # A norm layer after a concat: this group owns positions 0 and 2 only.
    half = ChannelGroup(
        id=7, size=2, slices=[ParamSlice("bn", "weight", 0, "norm", torch.tensor([0, -1, 1, -1]))]
    )
    zero_grads(tiny)
    reg = BNScaleL1([half], s=S, mask={7: torch.tensor([True, True])})
    reg.apply_to_grads(tiny)
    assert tiny.bn.weight.grad.tolist() == [S, 0.0, 0.0, 0.0]  # gamma[2] = 0 -> sign 0
    assert reg.penalty(tiny).item() == pytest.approx(S * (abs(BN_WEIGHT[0]) + abs(BN_WEIGHT[2])))


def test_groups_without_a_norm_scale_are_reported(group: ChannelGroup):
    bare = ChannelGroup(id=3, size=4, slices=group.slices_with_role("out", "in"))
    reg = BNScaleL1([group, bare], s=S)
    assert reg.unscaled_group_ids == [3]


def test_stats_split_penalized_and_kept(tiny: Tiny, group: ChannelGroup):
    reg = BNScaleL1([group], s=S, mask={0: torch.tensor([True, True, False, False])})
    stats = reg.stats(tiny)
    assert stats["mean_abs_gamma_penalized"] == pytest.approx(0.75)
    assert stats["mean_abs_gamma_kept"] == pytest.approx(1.0)


def test_bad_arguments_are_refused(group: ChannelGroup):
    with pytest.raises(ValueError, match="missing"):
        BNScaleL1([group], s=S, mask={})
    with pytest.raises(ValueError, match="shape"):
        BNScaleL1([group], s=S, mask={0: torch.tensor([True, False])})
    with pytest.raises(ValueError, match="BoolTensor"):
        BNScaleL1([group], s=S, mask={0: torch.ones(4)})
    with pytest.raises(ValueError, match="smooth_l1_beta"):
        BNScaleL1([group], s=S, norm="smooth_l1")
    with pytest.raises(ValueError, match="norm"):
        BNScaleL1([group], s=S, norm="l3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="s must"):
        BNScaleL1([group], s=-1.0)


def test_state_dict_round_trips_through_weights_only_load(tiny: Tiny, group: ChannelGroup):
    reg = BNScaleL1([group], s=S, mask={0: torch.tensor([False, True, False, True])})
    buffer = io.BytesIO()
    torch.save(reg.state_dict(), buffer)
    buffer.seek(0)
    restored = BNScaleL1([group], s=1.0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.s == S
    assert restored.mask[0].tolist() == [False, True, False, True]
    zero_grads(tiny)
    restored.apply_to_grads(tiny)
    assert tiny.bn.weight.grad.tolist() == [0.0, -S, 0.0, S]


def test_the_proximal_step_zeroes_a_crossing_and_holds_zero_only_in_the_mask(tiny: Tiny, group):
    # masked: channels 0-2 (1.0, -0.5, 0.0); channel 3 (2.0) is kept and never clipped
    regularizer = BNScaleL1([group], s=S)
    regularizer.set_mask({group.id: torch.tensor([True, True, True, False])})
    regularizer.remember_signs(tiny)
    with torch.no_grad():  # a step that flips channel 0, keeps 1, moves 2 off zero, flips 3
        tiny.bn.weight.copy_(torch.tensor([-0.25, -0.25, 0.5, -1.0]))
    regularizer.zero_the_crossed(tiny)
    assert tiny.bn.weight.tolist() == [0.0, -0.25, 0.0, -1.0]
    # the next step: momentum carries the zeroed channel 0 off zero; it is held there again
    regularizer.remember_signs(tiny)
    with torch.no_grad():
        tiny.bn.weight.copy_(torch.tensor([0.125, -0.125, -0.125, -1.0]))
    regularizer.zero_the_crossed(tiny)
    assert tiny.bn.weight.tolist() == [0.0, -0.125, 0.0, -1.0]
