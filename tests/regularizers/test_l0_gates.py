from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from regprune.graph.groups import ChannelGroup, ParamSlice
from regprune.regularizers import BETA, GAMMA, ZETA, HardConcreteGate, L0Regularizer
from tests.regularizers.tiny import Tiny, make_tiny


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def set_log_alpha(gate: HardConcreteGate, values: list[float]) -> None:
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor(values).reshape(gate.log_alpha.shape))


def test_constants():
    assert (BETA, GAMMA, ZETA) == (2 / 3, -0.1, 1.1)


def test_training_sample_formula():
    gate = HardConcreteGate(5)
    set_log_alpha(gate, [-2.0, -0.5, 0.0, 0.5, 2.0])
    torch.manual_seed(3)
    u = torch.rand(5) * (1 - 2e-6) + 1e-6
    torch.manual_seed(3)
    z = gate.sample()
    la = gate.log_alpha.detach()
    s = torch.sigmoid((u.log() - (1 - u).log() + la) / BETA) * (ZETA - GAMMA) + GAMMA
    assert torch.allclose(z, s.clamp(0, 1))


def test_training_samples_lie_in_0_1_with_exact_zeros_and_ones():
    gate = HardConcreteGate(20000)
    set_log_alpha(gate, [0.0] * 20000)
    z = gate.train()()
    assert z.min().item() == 0.0
    assert z.max().item() == 1.0
    # P(z = 0) = P(s <= 0) = 1 - sigmoid(log_alpha - beta * log(-gamma / zeta))
    p_zero = 1 - sigmoid(-BETA * math.log(0.1 / 1.1))
    assert (z == 0).float().mean().item() == pytest.approx(p_zero, abs=0.02)
    assert ((z > 0) & (z < 1)).any()


def test_eval_gate_formula():
    gate = HardConcreteGate(4).eval()
    set_log_alpha(gate, [-3.0, 0.0, 0.5, 3.0])
    expected = [min(max(sigmoid(a) * 1.2 - 0.1, 0.0), 1.0) for a in (-3.0, 0.0, 0.5, 3.0)]
    assert expected[0] == 0.0 and expected[1] == pytest.approx(0.5) and expected[3] == 1.0
    assert torch.allclose(gate(), torch.tensor(expected))
    assert torch.equal(gate(), gate())  # deterministic


def test_expected_l0_formula():
    gate = HardConcreteGate(3)
    set_log_alpha(gate, [-1.0, 0.0, 2.0])
    # beta * log(-gamma / zeta) = (2 / 3) * log(1 / 11)
    expected = [sigmoid(a + (2 / 3) * math.log(11)) for a in (-1.0, 0.0, 2.0)]
    assert torch.allclose(gate.expected_l0(), torch.tensor(expected))
    assert gate.expected_l0()[1].item() == pytest.approx(0.83182, abs=1e-5)


def test_clamp():
    gate = HardConcreteGate(3)
    set_log_alpha(gate, [-10.0, 0.25, 10.0])
    gate.clamp_()
    assert torch.allclose(gate.log_alpha, torch.tensor([math.log(0.01), 0.25, math.log(100)]))


def test_initialization():
    gate = HardConcreteGate((100, 100))
    assert gate.log_alpha.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert gate.log_alpha.std().item() == pytest.approx(0.01, rel=0.05)
    keep = HardConcreteGate(10000, init_keep_prob=0.9)
    assert keep.log_alpha.mean().item() == pytest.approx(math.log(9), abs=1e-3)
    with pytest.raises(ValueError, match="init_keep_prob"):
        HardConcreteGate(3, init_keep_prob=1.0)


def test_hold_fixes_one_draw_until_release():
    gate = HardConcreteGate(50).train()
    gate.hold()
    first = gate()
    assert gate() is first
    gate.release()
    assert not torch.equal(gate(), first)


# Per-weight gates -----------------------------------------------------------------------


def lenet_like() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))


def test_weight_gates_install_on_every_conv_and_linear():
    model = lenet_like()
    reg = L0Regularizer(model, lam=1.0, num_samples=10)
    assert set(reg.gates) == {"0", "3"}
    assert reg.gates["0"].log_alpha.shape == (2, 1, 3, 3)
    assert parametrize.is_parametrized(model[0], "weight")
    assert not parametrize.is_parametrized(model[0], "bias")
    names = {n for n, _ in model.named_parameters()}
    assert "0.parametrizations.weight.0.gate.log_alpha" in names


def test_weight_penalty_is_lam_over_n_times_expected_l0():
    model = lenet_like()
    reg = L0Regularizer(model, ["3"], lam=2.0, num_samples=8)
    set_log_alpha(reg.gates["3"], [0.0] * 24)
    per_gate = sigmoid((2 / 3) * math.log(11))
    assert reg.penalty(model).item() == pytest.approx(2.0 / 8 * 24 * per_gate)
    reg.penalty(model).backward()
    assert reg.gates["3"].log_alpha.grad is not None


def test_step_clamps_every_gate():
    model = lenet_like()
    reg = L0Regularizer(model, lam=1.0, num_samples=1)
    with torch.no_grad():
        reg.gates["0"].log_alpha.fill_(-50.0)
        reg.gates["3"].log_alpha.fill_(50.0)
    reg.step(model)
    assert reg.gates["0"].log_alpha.eq(math.log(0.01)).all()
    assert reg.gates["3"].log_alpha.eq(math.log(100)).all()


def test_own_adam_steps_the_gates_and_skips_an_overflowed_gradient():
    """With :meth:`L0Regularizer.train_gates_with_adam` the gates move in ``step`` (their
    gradient consumed), and a non-finite gradient (a float16 loss scaler's overflow step) is
    dropped instead of poisoning Adam's moments."""
    model = lenet_like()
    reg = L0Regularizer(model, lam=1.0, num_samples=1)
    reg.train_gates_with_adam(lr=0.1)
    assert reg.steps_own_parameters
    before = {k: g.log_alpha.detach().clone() for k, g in reg.gates.items()}
    reg.penalty(model).backward()
    reg.step(model)
    for key, gate in reg.gates.items():
        assert gate.log_alpha.grad is None
        assert torch.all(gate.log_alpha < before[key])  # the penalty closes every gate a bit
    moved = {k: g.log_alpha.detach().clone() for k, g in reg.gates.items()}
    reg.penalty(model).backward()
    reg.gates["0"].log_alpha.grad[0, 0, 0, 0] = float("inf")
    reg.step(model)
    for key, gate in reg.gates.items():
        assert torch.equal(gate.log_alpha, moved[key])
        assert gate.log_alpha.grad is None
    reg.penalty(model).backward()
    reg.step(model)
    assert all(torch.isfinite(g.log_alpha).all() for g in reg.gates.values())
    assert all(torch.all(g.log_alpha < moved[k]) for k, g in reg.gates.items())


def test_bake_leaves_a_plain_model_with_the_gated_eval_output():
    model = lenet_like()
    weight_before = model[3].weight
    reg = L0Regularizer(model, lam=1.0, num_samples=1)
    original = model[3].parametrizations.weight.original
    assert original is weight_before
    closed = torch.zeros(3, 8, dtype=torch.bool)
    closed[1, 2:6] = True
    set_log_alpha(reg.gates["3"], torch.where(closed, -6.0, 6.0).flatten().tolist())
    assert reg.sparsity() == pytest.approx(4 / (18 + 24))
    x = torch.randn(5, 1, 4, 4)
    model.eval()
    with torch.no_grad():
        gated = model(x)
    reg.bake()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert not any("log_alpha" in n for n, _ in model.named_parameters())
    assert model[3].weight is original  # the optimizer's parameter object survives
    assert not model[3].weight[closed].any()
    with torch.no_grad():
        assert torch.allclose(model(x), gated)


# Per-channel gates ----------------------------------------------------------------------


def open_and_close(reg: L0Regularizer, closed_channel: int) -> None:
    values = [6.0] * 4
    values[closed_channel] = -6.0
    set_log_alpha(reg.gates[0], values)


def test_channel_gate_zeroes_the_channel_output_in_train_and_eval(tiny: Tiny, group):
    reg = L0Regularizer(tiny, [group], lam=1.0, num_samples=1, granularity="channel")
    open_and_close(reg, 1)
    for name in ("conv1.weight", "conv1.bias", "bn.weight", "bn.bias"):
        module, param = name.split(".")
        assert parametrize.is_parametrized(getattr(tiny, module), param), name
    assert not parametrize.is_parametrized(tiny.conv2)  # the consumer's input slice is not gated
    outputs = {}
    tiny.bn.register_forward_hook(lambda m, i, o: outputs.__setitem__("bn", o))
    x = torch.randn(6, 3, 2, 2)
    for mode in ("eval", "train"):
        getattr(tiny, mode)()
        with torch.no_grad():
            tiny(x)
        assert not outputs["bn"][:, 1].any(), mode
        assert outputs["bn"][:, 0].abs().sum() > 0
    with torch.no_grad():
        assert tiny.bn.weight.tolist() == [1.0, 0.0, 0.0, 2.0]  # eval: test gates 1, 0, 1, 1


def test_one_draw_is_shared_by_every_slice_during_a_forward(tiny: Tiny, group: ChannelGroup):
    reg = L0Regularizer(tiny, [group], lam=1.0, num_samples=1, granularity="channel")
    set_log_alpha(reg.gates[0], [0.0] * 4)  # z is random and mostly strictly inside (0, 1)
    seen = {}

    def record(module: nn.Module, args: object, output: object) -> None:
        seen["bias"] = tiny.conv1.bias / tiny.conv1.parametrizations.bias.original
        seen["gamma"] = tiny.bn.weight / tiny.bn.parametrizations.weight.original

    tiny.bn.register_forward_hook(record)
    tiny.train()
    for _ in range(20):
        tiny(torch.randn(2, 3, 2, 2))
        # channel 0 has a non-zero bias and gamma: both read the same draw (the bias, before
        # the BN, its mask z > 0; gamma z itself)
        z = seen["gamma"][0].item()
        assert seen["bias"][0].item() == (1.0 if z > 0 else 0.0)


def test_filters_before_a_norm_take_the_mask_so_running_statistics_match_eval(tiny: Tiny, group):
    """A BN's batch statistics cancel a scaling of its input, so z on the filters before it
    would only reach the running statistics (a mean of z * y over draws) and break eval mode."""
    reference = make_tiny()
    reg = L0Regularizer(tiny, [group], lam=1.0, num_samples=1, granularity="channel")
    gate = reg.gates[0]
    gate.sample = lambda: torch.full_like(gate.log_alpha, 0.5)  # every draw open, inside (0, 1)
    tiny.train()
    reference.train()
    x = torch.randn(8, 3, 2, 2)
    with torch.no_grad():
        scaled = tiny(x)
        reference(x)
    assert torch.allclose(tiny.bn.running_mean, reference.bn.running_mean)
    assert torch.allclose(tiny.bn.running_var, reference.bn.running_var)
    # the draw still acts through the BN's scale and shift
    with torch.no_grad():
        assert not torch.allclose(scaled, reference(x))


def test_filters_without_a_norm_are_scaled_by_the_gate():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    every = torch.arange(4)
    group = ChannelGroup(
        id=0,
        size=4,
        slices=[
            ParamSlice("0", "weight", 0, "out", every),
            ParamSlice("0", "bias", 0, "out", every),
            ParamSlice("2", "weight", 1, "in", every),
        ],
        producers=["0"],
    )
    reg = L0Regularizer(model, [group], lam=1.0, num_samples=1, granularity="channel")
    gate = reg.gates[0]
    gate.sample = lambda: torch.full_like(gate.log_alpha, 0.5)
    model.train()
    gate.hold()
    ratio = model[0].weight / model[0].parametrizations.weight.original
    gate.release()
    assert torch.allclose(ratio[ratio == ratio], torch.tensor(0.5))  # NaN where W was 0


def test_channel_penalty_counts_every_parameter_of_the_channel(tiny: Tiny, group):
    reg = L0Regularizer(tiny, [group], lam=3.0, num_samples=4, granularity="channel")
    set_log_alpha(reg.gates[0], [0.0] * 4)
    # |g| per channel: conv1 filter 3 + bias 1 + bn gamma 1 + beta 1 + conv2 input column 5
    per_gate = sigmoid((2 / 3) * math.log(11))
    assert reg.penalty(tiny).item() == pytest.approx(3.0 / 4 * 4 * 11 * per_gate)
    open_and_close(reg, 2)
    assert reg.sparsity() == pytest.approx(11 / 44)
    assert reg.test_gates()[0].tolist() == [1.0, 1.0, 0.0, 1.0]


def test_channel_bake_matches_the_gated_model(tiny: Tiny, group: ChannelGroup):
    reg = L0Regularizer(tiny, [group], lam=1.0, num_samples=1, granularity="channel")
    set_log_alpha(reg.gates[0], [6.0, -6.0, 0.3, 6.0])  # open, closed, partly open, open
    x = torch.randn(4, 3, 2, 2)
    tiny.eval()
    with torch.no_grad():
        gated = tiny(x)
    reg.bake()
    assert not any(parametrize.is_parametrized(m) for m in tiny.modules())
    assert tiny.conv1.weight[1].abs().sum().item() == 0.0
    assert tiny.bn.bias[1].item() == 0.0
    z2 = sigmoid(0.3) * 1.2 - 0.1
    assert tiny.bn.weight[2].item() == pytest.approx(0.0)  # gamma was 0
    assert tiny.bn.bias[2].item() == pytest.approx(-0.3 * z2)
    with torch.no_grad():
        assert torch.allclose(tiny(x), gated)


def test_state_dict_round_trip(tiny: Tiny, group: ChannelGroup):
    reg = L0Regularizer(tiny, [group], lam=1.0, num_samples=1, granularity="channel")
    set_log_alpha(reg.gates[0], [1.0, 2.0, 3.0, 4.0])
    buffer = io.BytesIO()
    torch.save(reg.state_dict(), buffer)
    buffer.seek(0)
    fresh = Tiny()
    other = L0Regularizer(fresh, [group], lam=1.0, num_samples=1, granularity="channel")
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert other.gates[0].log_alpha.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_bad_arguments_are_refused(tiny: Tiny, group: ChannelGroup):
    with pytest.raises(ValueError, match="channel groups"):
        L0Regularizer(tiny, lam=1.0, num_samples=1, granularity="channel")
    with pytest.raises(ValueError, match="num_samples"):
        L0Regularizer(tiny, lam=1.0, num_samples=0)
    with pytest.raises(ValueError, match="not a module"):
        L0Regularizer(tiny, [nn.Linear(2, 2)], lam=1.0, num_samples=1)
    with pytest.raises(ValueError, match="no weight"):
        L0Regularizer(lenet_like(), ["1"], lam=1.0, num_samples=1)  # the ReLU


def test_hooks_refuse_a_model_the_gates_do_not_live_in():
    model = lenet_like()
    reg = L0Regularizer(model, lam=1.0, num_samples=1)
    with pytest.raises(ValueError, match="pass that model"):
        reg.penalty(lenet_like())
    with pytest.raises(ValueError, match="pass that model"):
        reg.step(lenet_like())


def test_baked_copy_matches_bake_and_leaves_the_gated_model_as_it_was():
    model = lenet_like()
    reg = L0Regularizer(model, lam=1.0, num_samples=1)
    for gate in reg.gates.values():
        with torch.no_grad():
            gate.log_alpha.normal_(0.0, 4.0)  # some gates closed, some open
    x = torch.rand(2, 1, 4, 4)
    model.eval()
    gated_before = model(x)
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    baked = reg.baked_copy()
    assert not any(parametrize.is_parametrized(m) for m in baked.modules())
    assert torch.equal(baked(x), gated_before)  # the test gates, written into the weights
    assert any(bool((p == 0).any()) for p in baked.parameters())
    # the gated model still has its gates, its hooks and its values: training can go on
    assert all(parametrize.is_parametrized(model[i], "weight") for i in (0, 3))
    assert all(torch.equal(v, state_before[k]) for k, v in model.state_dict().items())
    model.train()
    reg.penalty(model).backward()
    assert reg.gates["0"].log_alpha.grad is not None
    reg.bake()
    model.eval()
    assert torch.equal(model(x), baked(x))


def test_gates_settle_to_their_test_value_from_settle_at_and_resume_settled(tiny: Tiny, group):
    reg = L0Regularizer(tiny, [group], lam=1.0, num_samples=1, granularity="channel")
    reg.settle_at = 3
    gate = reg.gates[0]
    set_log_alpha(gate, [0.0, 0.5, 1.0, -0.5])  # test gates strictly inside (0, 1)
    gate.train()
    for _ in range(3):
        assert not torch.equal(gate(), gate.test_gate())  # sampled draws while learning
        reg.step(tiny)
    with torch.no_grad():
        assert torch.equal(gate(), gate.test_gate())  # settled: the network that is kept
    state = reg.state_dict()
    fresh = make_tiny()
    other = L0Regularizer(fresh, [group], lam=1.0, num_samples=1, granularity="channel")
    other.settle_at = 3
    other.load_state_dict(state)
    other.gates[0].train()
    with torch.no_grad():
        assert torch.equal(other.gates[0](), other.gates[0].test_gate())
