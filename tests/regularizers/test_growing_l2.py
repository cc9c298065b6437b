from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from regprune.graph.groups import ChannelGroup, ParamSlice
from regprune.regularizers import GrowingL2, l1_prune_set
from tests.regularizers.tiny import Tiny, zero_grads

# Mean |w| per channel over the "out" slices (conv1 row and bias, 4 entries each):
#   ch0 (1 + 2 + 2 + 0.5) / 4 = 1.375, ch1 0, ch2 (3 + 4) / 4 = 1.75, ch3 (1 + 1 + 1 + 0.5) / 4
MAGNITUDE = [1.375, 0.0, 1.75, 0.875]
ODD = torch.tensor([False, True, False, True])  # the two smallest channels: 1 and 3
RATIO_ODD = ((1.375 + 1.75) / 2) / ((0.0 + 0.875) / 2)  # kept / pruned = 25 / 7


def conv2_group(group_id: int = 1) -> ChannelGroup:
    return ChannelGroup(
        id=group_id, size=5, slices=[ParamSlice("conv2", "weight", 0, "out", torch.arange(5))]
    )


def test_greg1_lambdas_follow_the_schedule_step_by_step(tiny: Tiny, group: ChannelGroup):
    reg = GrowingL2(
        [group], prune_set={0: ODD}, update_every=2, delta=0.25, tau=0.6, stabilize_iters=3
    )
    seen = []
    for _ in range(10):
        reg.step(tiny)
        seen.append((reg.iteration, reg.lambdas()[0], reg.phase))
    assert seen == [
        (1, (0.0, 0.0), "growing"),
        (2, (0.25, 0.0), "growing"),
        (3, (0.25, 0.0), "growing"),
        (4, (0.5, 0.0), "growing"),
        (5, (0.5, 0.0), "growing"),
        (6, (0.75, 0.0), "stabilizing"),  # 0.75 > tau: the layer stops, lambdas are held
        (7, (0.75, 0.0), "stabilizing"),
        (8, (0.75, 0.0), "stabilizing"),
        (9, (0.75, 0.0), "done"),  # K_s = 3 steps after all layers stopped
        (10, (0.75, 0.0), "done"),
    ]
    assert reg.done


def test_gradient_edit_is_lambda_w_on_out_and_norm_slices_of_the_prune_set(tiny: Tiny, group):
    reg = GrowingL2([group], prune_set={0: ODD}, update_every=1, delta=0.5)
    reg.step(tiny)
    zero_grads(tiny)
    reg.apply_to_grads(tiny)
    rows = ODD.float()
    assert torch.equal(
        tiny.conv1.weight.grad, 0.5 * tiny.conv1.weight.detach() * rows[:, None, None, None]
    )
    assert torch.equal(tiny.conv1.bias.grad, 0.5 * tiny.conv1.bias.detach() * rows)
    assert torch.equal(tiny.bn.weight.grad, 0.5 * tiny.bn.weight.detach() * rows)
    assert tiny.bn.weight.grad.tolist() == [0.0, -0.25, 0.0, 1.0]
    assert torch.equal(tiny.bn.bias.grad, 0.5 * tiny.bn.bias.detach() * rows)
    assert not tiny.conv2.weight.grad.any()  # consumer input slices are not penalized


def test_kept_units_get_kept_lambda(tiny: Tiny, group: ChannelGroup):
    reg = GrowingL2([group], prune_set={0: ODD}, update_every=1, delta=0.5, kept_lambda=-0.125)
    reg.step(tiny)
    assert reg.lambdas() == {0: (0.5, -0.125)}
    zero_grads(tiny)
    grad = tiny.bn.weight.grad
    reg.apply_to_grads(tiny)
    assert tiny.bn.weight.grad is grad
    # gamma = [1, -0.5, 0, 2]; lambda = [-0.125, 0.5, -0.125, 0.5]
    assert grad.tolist() == [-0.125, -0.25, 0.0, 1.0]


def test_penalty_gradient_equals_the_gradient_edit(tiny: Tiny, group: ChannelGroup):
    reg = GrowingL2([group], prune_set={0: ODD}, update_every=1, delta=0.5, kept_lambda=-0.125)
    reg.step(tiny)
    zero_grads(tiny)
    reg.apply_to_grads(tiny)
    edited = {n: p.grad.clone() for n, p in tiny.named_parameters()}
    zero_grads(tiny)
    reg.penalty(tiny).backward()
    for name, param in tiny.named_parameters():
        assert torch.allclose(param.grad, edited[name]), name


def test_a_layer_stops_when_the_magnitude_ratio_reaches_ratio_stop(tiny: Tiny, group):
    reg = GrowingL2([group], prune_set={0: ODD}, update_every=1, delta=0.25, ratio_stop=3.0)
    reg.step(tiny)  # first EMA = 25 / 7 >= 3: stop right after this update's growth
    assert reg.state_dict()["layers"][0]["ema"] == pytest.approx(RATIO_ODD)
    assert reg.phase == "stabilizing"
    reg.step(tiny)
    assert reg.lambdas() == {0: (0.25, 0.0)}


def test_magnitude_ratio_ema(tiny: Tiny, group: ChannelGroup):
    reg = GrowingL2([group], prune_set={0: ODD}, update_every=1, delta=1e-3)
    reg.step(tiny)
    with torch.no_grad():  # halve channel 3: its magnitude becomes 0.4375
        tiny.conv1.weight[3] *= 0.5
        tiny.conv1.bias[3] *= 0.5
    reg.step(tiny)
    second = ((1.375 + 1.75) / 2) / (0.4375 / 2)
    expected = 0.9 * RATIO_ODD + 0.1 * second
    assert reg.state_dict()["layers"][0]["ema"] == pytest.approx(expected)
    assert reg.phase == "growing"


def test_layers_stop_independently(tiny: Tiny, group: ChannelGroup):
    other = conv2_group()
    prune = {0: ODD, 1: torch.tensor([False, False, True, False, False])}
    # conv2 rows have mean |w| .85, .45, .1, .35, .75: group 1's ratio is 0.6 / 0.1 = 6
    reg = GrowingL2(
        [group, other], prune_set=prune, update_every=1, delta=0.25, tau=0.6, ratio_stop=5.0
    )
    reg.step(tiny)  # group 0: 25/7 < 5 keeps growing; group 1: 6 >= 5 stops
    assert reg.layer_status() == {0: "growing", 1: "stopped"}
    assert reg.phase == "growing"
    reg.step(tiny)
    reg.step(tiny)  # group 0 reaches 0.75 > tau
    assert reg.layer_status() == {0: "stopped", 1: "stopped"}
    assert reg.lambdas() == {0: (0.75, 0.0), 1: (0.25, 0.0)}
    assert reg.phase == "stabilizing"


def test_empty_prune_set_stops_at_once_with_lambda_zero(tiny: Tiny, group: ChannelGroup):
    reg = GrowingL2([group], prune_set={0: torch.zeros(4, dtype=torch.bool)}, stabilize_iters=2)
    assert reg.phase == "stabilizing"
    assert reg.lambdas() == {0: (0.0, 0.0)}
    reg.step(tiny)
    reg.step(tiny)
    assert reg.done


def test_greg2_picks_the_smallest_channels_after_the_picking_phase(tiny: Tiny, group):
    reg = GrowingL2(
        [group], pick_ratio=0.5, update_every=1, pick_delta=0.25, pick_ceiling=0.5, delta=0.125
    )
    assert reg.phase == "picking"
    reg.step(tiny)
    assert reg.phase == "picking"
    assert reg.lambdas() == {0: (0.25, 0.25)}
    with pytest.raises(RuntimeError, match="picking"):
        reg.prune_set()
    zero_grads(tiny)
    reg.apply_to_grads(tiny)  # while picking every channel gets the same lambda
    assert torch.equal(tiny.bn.weight.grad, 0.25 * tiny.bn.weight.detach())
    reg.step(tiny)  # lambda reaches the ceiling: pick
    assert reg.phase == "growing"
    assert reg.prune_set()[0].tolist() == ODD.tolist()
    assert reg.lambdas() == {0: (0.5, 0.5)}
    reg.step(tiny)  # pushing: S grows on, kept go to -1e-4 (the GReg-2 default)
    assert reg.lambdas() == {0: (0.625, -1e-4)}


def test_default_picking_takes_one_thousand_updates(tiny: Tiny, group: ChannelGroup):
    reg = GrowingL2([group], pick_ratio=0.5, update_every=1)  # 1e-5 per update up to 1e-2
    for _ in range(999):
        reg.step(tiny)
    assert reg.phase == "picking"
    reg.step(tiny)
    assert reg.phase == "growing"
    assert reg.lambdas()[0] == pytest.approx((1e-2, 1e-2))


def test_greg1_growth_does_not_drift(tiny: Tiny, group: ChannelGroup):
    reg = GrowingL2([group], prune_set={0: ODD}, update_every=1, delta=0.1, ratio_stop=1e9)
    for _ in range(10):
        reg.step(tiny)
    # 10 * 0.1 == 1.0, while ten float additions of 0.1 give 0.9999999999999999
    assert reg.lambdas()[0] == (1.0, 0.0)
    assert reg.phase == "growing"  # 1.0 does not exceed tau = 1.0
    reg.step(tiny)
    assert reg.phase == "stabilizing"


def test_l1_prune_set_structured(tiny: Tiny, group: ChannelGroup):
    assert l1_prune_set(tiny, [group], 0.5)[0].tolist() == ODD.tolist()
    # never the whole layer: ceil(0.99 * 4) = 4 is capped at 3
    assert l1_prune_set(tiny, [group], 0.99)[0].tolist() == [True, True, False, True]


def test_l1_prune_set_unstructured_rounds_ratio_times_n_up():
    linear = nn.Linear(5, 2, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.arange(10.0).reshape(2, 5) - 4.5)
    chosen = l1_prune_set(linear, dict(linear.named_parameters()), 0.3)["weight"]
    # |w| = 4.5 ... 0.5 ... 4.5; the three smallest are -0.5, 0.5 and then -1.5 (stable order)
    assert chosen.tolist() == [
        [False, False, False, True, True],
        [True, False, False, False, False],
    ]


def test_unstructured_mode_edits_single_weights(tiny: Tiny):
    targets = {"conv2.weight": tiny.conv2.weight}
    prune = l1_prune_set(tiny, targets, 0.25)
    small = tiny.conv2.weight.detach().abs() < 0.25
    assert torch.equal(prune["conv2.weight"], small)  # 0, +-0.1, +-0.2
    reg = GrowingL2(targets, prune_set=prune, update_every=1, delta=0.5)
    reg.step(tiny)
    zero_grads(tiny)
    reg.apply_to_grads(tiny)
    assert torch.equal(tiny.conv2.weight.grad, 0.5 * tiny.conv2.weight.detach() * small)
    assert not tiny.conv1.weight.grad.any()
    assert not tiny.bn.weight.grad.any()


def test_unstructured_named_parameter_pairs_are_accepted(tiny: Tiny):
    pairs = [(n, p) for n, p in tiny.named_parameters() if p.dim() > 1]
    reg = GrowingL2(pairs, pick_ratio=0.25, update_every=1, pick_delta=1.0, pick_ceiling=1.0)
    reg.step(tiny)
    picked = reg.prune_set()
    assert set(picked) == {"conv1.weight", "conv2.weight"}
    assert int(picked["conv1.weight"].sum()) == 3  # ceil(0.25 * 12)


def test_state_dict_resumes_exactly(tiny: Tiny, group: ChannelGroup):
    def make() -> GrowingL2:
        return GrowingL2(
            [group], pick_ratio=0.5, update_every=2, pick_delta=0.25, pick_ceiling=0.5, delta=0.25
        )

    first = make()
    for _ in range(5):
        first.step(tiny)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = make()
    second.load_state_dict(torch.load(buffer, weights_only=True))
    assert second.iteration == 5
    assert second.phase == first.phase == "growing"
    for _ in range(6):
        first.step(tiny)
        second.step(tiny)
        assert second.lambdas() == first.lambdas()
        assert second.phase == first.phase
    assert torch.equal(second.prune_set()[0], first.prune_set()[0])


def test_bad_arguments_are_refused(group: ChannelGroup):
    with pytest.raises(ValueError, match="exactly one"):
        GrowingL2([group])
    with pytest.raises(ValueError, match="exactly one"):
        GrowingL2([group], prune_set={0: ODD}, pick_ratio=0.5)
    with pytest.raises(ValueError, match="covers every unit"):
        GrowingL2([group], prune_set={0: torch.ones(4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="missing"):
        GrowingL2([group], prune_set={})
    with pytest.raises(ValueError, match="shape"):
        GrowingL2([group], prune_set={0: torch.tensor([True, False])})
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        GrowingL2([group], pick_ratio=1.0)
    with pytest.raises(ValueError, match="update_every"):
        GrowingL2([group], prune_set={0: ODD}, update_every=0)
    with pytest.raises(TypeError, match="not a mix"):
        GrowingL2([group, "conv1.weight"], pick_ratio=0.5)  # type: ignore[list-item]
