from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

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
    conv = make_conv()
    reg = HierarchicalGroupSparsity([conv], lam=1e-3, variant=variant)  # type: ignore[arg-type]
    assert reg.hgsr().item() == pytest.approx(expected)
    # docs/specs/METHODS.md: 0.5 * lambda * HGSR + 0.5 * lambda * L1
    assert reg.penalty().item() == pytest.approx(0.5e-3 * expected + 0.5e-3 * L1)
    no_l1 = HierarchicalGroupSparsity([conv], lam=1e-3, variant=variant, l1=False)  # type: ignore[arg-type]
    assert no_l1.penalty().item() == pytest.approx(0.5e-3 * expected)


def _grad(variant: str) -> torch.Tensor:
    conv = make_conv()
    # lam * balance = 1 and no L1: the gradient of the bare HGSR
    HierarchicalGroupSparsity([conv], lam=2.0, variant=variant, l1=False).penalty().backward()  # type: ignore[arg-type]
    return conv.weight.grad[:, :, 0, :]


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


def test_input_channel_norms_show_which_inputs_are_read():
    conv = make_conv()
    norms = HierarchicalGroupSparsity({"c": conv}).input_channel_norms()
    assert torch.allclose(norms["c"], torch.tensor([math.sqrt(25 + 1), math.sqrt(0 + 100)]))
    with torch.no_grad():
        conv.weight[:, 1] = 0.0
    assert HierarchicalGroupSparsity({"c": conv}).input_channel_norms()["c"][1].item() == 0.0


def test_grouped_conv_groups_by_true_input_channel():
    conv = nn.Conv2d(4, 4, 1, groups=2, bias=False)
    with torch.no_grad():  # W[o, j]: filters 0, 1 read inputs 0, 1; filters 2, 3 read 2, 3
        conv.weight.copy_(
            torch.tensor([[1.0, 2.0], [3.0, -4.0], [5.0, 0.0], [6.0, 7.0]])[..., None, None]
        )
    reg = HierarchicalGroupSparsity([conv], variant="squared", l1=False)
    # input 0: |1| + |3| = 4; input 1: 2 + 4 = 6; input 2: 5 + 6 = 11; input 3: 0 + 7 = 7
    assert reg.hgsr().item() == pytest.approx(4**2 + 6**2 + 11**2 + 7**2)
    norms = reg.input_channel_norms()["0"]
    assert torch.allclose(norms, torch.tensor([10.0, 20.0, 61.0, 49.0]).sqrt())


def test_a_model_is_scanned_for_its_convs():
    model = nn.Sequential(make_conv(), nn.ReLU(), make_conv(), nn.Flatten(), nn.Linear(2, 1))
    reg = HierarchicalGroupSparsity(model, variant="exclusive", l1=False, lam=2.0)
    assert list(reg.convs) == ["0", "2"]
    assert reg.penalty().item() == pytest.approx(2 * 260)


def test_transposed_convs_fail_loudly():
    model = nn.Sequential(make_conv(), nn.ConvTranspose2d(2, 2, 1))
    with pytest.raises(ValueError, match="transposed"):
        HierarchicalGroupSparsity(model)
    with pytest.raises(ValueError, match="no Conv"):
        HierarchicalGroupSparsity(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="variant"):
        HierarchicalGroupSparsity(make_conv(), variant="cubic")  # type: ignore[arg-type]


def test_state_dict():
    reg = HierarchicalGroupSparsity(make_conv(), lam=0.25)
    buffer = io.BytesIO()
    torch.save(reg.state_dict(), buffer)
    buffer.seek(0)
    other = HierarchicalGroupSparsity(make_conv())
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert other.lam == 0.25
