from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from regprune.graph import trace_graph
from regprune.regularizers import HierarchicalGroupSparsity

# W[o, i] kernels (1x2) of a conv 2 -> 2:
#   W[0, 0] = [3, 4]   n = 5,  a = 7        W[0, 1] = [0, 0]   n = 0,  a = 0 (vanished)
#   W[1, 0] = [0, 1]   n = 1,  a = 1        W[1, 1] = [-6, 8]  n = 10, a = 14
# n = L2 norm, a = L1 norm of the kernel; input channel 0: sum_o n = 6, channel 1: 10.
KERNELS = [[[3.0, 4.0], [0.0, 0.0]], [[0.0, 1.0], [-6.0, 8.0]]]
L1 = 7 + 0 + 1 + 14


def make_conv() -> nn.Conv2d:
    conv = nn.Conv2d(2, 2, (1, 2), bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(KERNELS)[:, :, None, :])
    return conv


def hgsr_over(model: nn.Module, x: torch.Tensor, **kwargs) -> HierarchicalGroupSparsity:
    return HierarchicalGroupSparsity(trace_graph(model, x).groups, **kwargs)


def conv_reading_two_channels() -> tuple[nn.Module, HierarchicalGroupSparsity]:
    """A 1x1 conv makes two prunable channels; the conv of KERNELS reads them."""
    model = nn.Sequential(nn.Conv2d(1, 2, 1), make_conv())
    return model, hgsr_over(model, torch.rand(1, 1, 3, 3))


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("squared", 6**2 + 10**2),
        ("sqrt", math.sqrt(6) + math.sqrt(10)),
        ("l1_2", (math.sqrt(7) + math.sqrt(1)) ** 2 + (0 + math.sqrt(14)) ** 2),
        ("exclusive", (7 + 1) ** 2 + (0 + 14) ** 2),
    ],
)
def test_variant_values(variant: str, expected: float):
    model = nn.Sequential(nn.Conv2d(1, 2, 1), make_conv())
    x = torch.rand(1, 1, 3, 3)
    reg = hgsr_over(model, x, lam=1e-3, variant=variant)
    assert reg.hgsr(model).item() == pytest.approx(expected)
    # docs/specs/METHODS.md: 0.5 * lambda * HGSR + 0.5 * lambda * L1 (over the read weights:
    # the first conv reads the image, which is not prunable, so only KERNELS count)
    assert reg.penalty(model).item() == pytest.approx(0.5e-3 * expected + 0.5e-3 * L1)
    no_l1 = hgsr_over(model, x, lam=1e-3, variant=variant, l1=False)
    assert no_l1.penalty(model).item() == pytest.approx(0.5e-3 * expected)


def _grad(variant: str) -> torch.Tensor:
    model = nn.Sequential(nn.Conv2d(1, 2, 1), make_conv())
    # lam * balance = 1 and no L1: the gradient of the bare HGSR
    reg = hgsr_over(model, torch.rand(1, 1, 3, 3), lam=2.0, variant=variant, l1=False)
    reg.penalty(model).backward()
    assert model[0].weight.grad is None  # only the weights that read a channel are penalized
    return model[1].weight.grad[:, :, 0, :]


def test_squared_gradient():
    grad = _grad("squared")
    # d/dW_oi (sum_o n_oi)^2 = 2 * (sum_o n_oi) * W_oi / n_oi
    assert torch.allclose(grad[0, 0], 2 * 6 * torch.tensor([3.0, 4.0]) / 5)
    assert torch.allclose(grad[1, 1], 2 * 10 * torch.tensor([-6.0, 8.0]) / 10)
    assert grad[0, 1].tolist() == [0.0, 0.0]  # a vanished kernel: zero subgradient, not nan


def test_sqrt_gradient():
    grad = _grad("sqrt")
    # d/dW_oi sqrt(sum_o n_oi) = 0.5 / sqrt(sum_o n_oi) * W_oi / n_oi
    assert torch.allclose(grad[1, 0], 0.5 / math.sqrt(6) * torch.tensor([0.0, 1.0]))
    assert torch.allclose(grad[1, 1], 0.5 / math.sqrt(10) * torch.tensor([-6.0, 8.0]) / 10)
    assert grad[0, 1].tolist() == [0.0, 0.0]


def test_l1_2_gradient():
    grad = _grad("l1_2")
    # d/dW_oi (sum_o sqrt(a_oi))^2 = 2 * (sum_o sqrt(a_oi)) * 0.5 / sqrt(a_oi) * sign(W_oi)
    outer0 = math.sqrt(7) + 1
    assert torch.allclose(grad[0, 0], torch.full((2,), outer0 / math.sqrt(7)))
    assert torch.allclose(grad[1, 1], torch.tensor([-1.0, 1.0]))  # sqrt(14) / sqrt(14)
    assert torch.isfinite(grad).all()
    assert grad[0, 1].tolist() == [0.0, 0.0]


def test_exclusive_gradient():
    grad = _grad("exclusive")
    # d/dW_oik (sum_o a_oi)^2 = 2 * (sum_o a_oi) * sign(W_oik)
    assert grad[0, 0].tolist() == [16.0, 16.0]
    assert grad[1, 0].tolist() == [0.0, 16.0]  # sign(0) = 0
    assert grad[1, 1].tolist() == [-28.0, 28.0]


def test_input_channel_norms_show_which_channels_are_read():
    model, reg = conv_reading_two_channels()
    (norms,) = reg.input_channel_norms(model).values()
    assert torch.allclose(norms, torch.tensor([math.sqrt(25 + 1), math.sqrt(0 + 100)]).double())
    with torch.no_grad():
        model[1].weight[:, 1] = 0.0
    assert reg.input_channel_norms(model)[0][1].item() == 0.0


def test_a_transposed_consumer_is_grouped_by_its_input_dim():
    """ConvTranspose stores [in, out, k]: the same kernels laid out that way give the same HGSR."""
    deconv = nn.ConvTranspose2d(2, 2, (1, 2), bias=False)
    with torch.no_grad():
        deconv.weight.copy_(torch.tensor(KERNELS).transpose(0, 1)[:, :, None, :])
    model = nn.Sequential(nn.Conv2d(1, 2, 1), deconv)
    reg = hgsr_over(model, torch.rand(1, 1, 3, 3), variant="squared", l1=False)
    assert reg.hgsr(model).item() == pytest.approx(6**2 + 10**2)


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 1), nn.Conv2d(1, 1, 1)
        self.c = nn.Conv2d(3, 1, 1, bias=False)
        with torch.no_grad():
            self.c.weight.copy_(torch.tensor([1.0, -2.0, 3.0]).reshape(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.cat([self.a(x), self.b(x)], dim=1))


def test_a_concat_consumer_counts_each_read_entry_once():
    model = Concat()
    reg = hgsr_over(model, torch.rand(1, 1, 2, 2), lam=1.0, variant="squared")
    assert len(reg.groups) == 2  # a's two channels and b's one, both read by c
    assert reg.hgsr(model).item() == pytest.approx(1 + 4 + 9)
    assert reg.penalty(model).item() == pytest.approx(0.5 * 14 + 0.5 * 6)


def test_a_linear_after_flatten_groups_a_channels_positions():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten(), nn.Linear(8, 1, bias=False))
    with torch.no_grad():
        model[2].weight.copy_(torch.arange(8.0).reshape(1, 8) - 3)  # -3 .. 4, channel-major
    reg = hgsr_over(model, torch.rand(1, 1, 2, 2), variant="exclusive", l1=False)
    # channel 0 reads |-3|+|-2|+|-1|+0 = 6, channel 1 reads 1+2+3+4 = 10
    assert reg.hgsr(model).item() == pytest.approx(6**2 + 10**2)


def test_bad_arguments_fail_loudly():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), make_conv())
    with pytest.raises(ValueError, match="variant"):
        hgsr_over(model, torch.rand(1, 1, 3, 3), variant="cubic")
    with pytest.raises(ValueError, match="lam"):
        hgsr_over(model, torch.rand(1, 1, 3, 3), lam=-1.0)
    with pytest.raises(TypeError, match="ChannelGroup"):
        HierarchicalGroupSparsity([make_conv()])  # type: ignore[list-item]


def test_state_dict():
    _, reg = conv_reading_two_channels()
    reg.lam = 0.25
    buffer = io.BytesIO()
    torch.save(reg.state_dict(), buffer)
    buffer.seek(0)
    _, other = conv_reading_two_channels()
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert other.lam == 0.25
