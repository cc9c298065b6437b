"""The papers' models: shapes on both datasets, published sizes, traceability, design options."""

from __future__ import annotations

import math

import pytest
import torch
import torch.fx
from torch import nn

import regprune as rp
from regprune.models import create_model, list_models
from regprune.models.lenet import LeNet5
from regprune.models.mobilenetv2_cifar import InvertedResidual
from regprune.models.resnet_cifar import BasicBlock, CifarResNet, PadShortcut
from regprune.models.vgg import VGG

DATASET_INPUTS = {"fmnist": (1, 28), "cifar": (3, 32)}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("dataset", DATASET_INPUTS)
@pytest.mark.parametrize("name", list_models())
def test_output_shape_on_fashion_mnist_and_cifar(name: str, dataset: str) -> None:
    torch.manual_seed(0)
    channels, size = DATASET_INPUTS[dataset]
    model = create_model(name, num_classes=7, in_channels=channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_forward_is_fx_traceable_and_matches_eager(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("lenet5", {"in_channels": 1}, 61_706),  # LeCun et al. LeNet-5 on MNIST
        ("resnet20", {"shortcut": "A"}, 269_722),  # He et al.: 0.27 M
        ("resnet56", {"shortcut": "A"}, 853_018),  # 0.85 M
        ("resnet110", {"shortcut": "A"}, 1_727_962),  # 1.7 M
        ("vgg19", {}, 20_035_018),  # network slimming: 20.04 M
    ],
)
def test_parameter_counts_match_the_papers(name: str, kwargs: dict, expected: int) -> None:
    assert _params(create_model(name, num_classes=10, **kwargs)) == expected


def test_resnet_depth_sets_blocks_per_stage() -> None:
    for depth, blocks in [(20, 3), (32, 5), (56, 9), (110, 18)]:
        model = create_model(f"resnet{depth}")
        assert [len(stage) for stage in (model.layer1, model.layer2, model.layer3)] == [blocks] * 3
        assert model.layer3[0].conv1.out_channels == 64


def test_resnet_shortcut_a_has_no_shortcut_convs_and_b_has_projections() -> None:
    model_a = create_model("resnet20", shortcut="A")
    model_b = create_model("resnet20")  # "B" is the default
    shortcuts_a = [block.shortcut for block in model_a.modules() if isinstance(block, BasicBlock)]
    shortcuts_b = [block.shortcut for block in model_b.modules() if isinstance(block, BasicBlock)]
    assert sum(isinstance(s, PadShortcut) for s in shortcuts_a) == 2
    assert not any(isinstance(m, nn.Conv2d) for s in shortcuts_a for m in s.modules())
    projections = [s for s in shortcuts_b if not isinstance(s, nn.Identity)]
    assert len(projections) == 2
    assert all(isinstance(s[0], nn.Conv2d) and s[0].kernel_size == (1, 1) for s in projections)
    convs_a = sum(isinstance(m, nn.Conv2d) for m in model_a.modules())
    convs_b = sum(isinstance(m, nn.Conv2d) for m in model_b.modules())
    assert (convs_a, convs_b) == (19, 21)


def test_pad_shortcut_subsamples_and_zero_pads_channels_on_both_sides() -> None:
    shortcut = PadShortcut(16, 32, stride=2)
    x = torch.randn(2, 16, 7, 7)  # odd size: must match a stride-2 3x3 conv's ceil(7 / 2) = 4
    out = shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"depth": 21}, "6n \\+ 2"), ({"depth": 20, "shortcut": "C"}, "shortcut")],
)
def test_resnet_rejects_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CifarResNet(**kwargs)


def test_lenet_same_weights_serve_28_and_32_inputs_and_padding_0_is_classic() -> None:
    model = LeNet5(in_channels=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 28, 28)).shape == model(torch.randn(1, 3, 32, 32)).shape
    classic = LeNet5(in_channels=3, padding=0)
    # Without padding a 32x32 image reaches exactly 16x5x5 before the adaptive pool.
    assert classic.features[:6](torch.randn(1, 3, 32, 32)).shape == (1, 16, 5, 5)
    assert model.classifier[0].in_features == 16 * 5 * 5


def test_vgg_has_four_pools_a_linear_head_and_optional_mlp_head() -> None:
    model = create_model("vgg16")
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 4
    assert sum(isinstance(m, nn.Conv2d) for m in model.features) == 13
    assert isinstance(model.classifier, nn.Linear)
    mlp = create_model("vgg16", classifier_hidden=512).eval()
    assert isinstance(mlp.classifier[1], nn.BatchNorm1d)
    assert mlp(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vgg_accepts_custom_widths_and_rejects_bad_cfg() -> None:
    small = VGG([8, "M", 16, "M", 32], num_classes=3, in_channels=1).eval()
    assert small(torch.randn(1, 1, 28, 28)).shape == (1, 3)
    with pytest.raises(ValueError, match="cfg"):
        VGG(["M", 0])


def test_mobilenetv2_is_cifar_adapted_with_depthwise_blocks() -> None:
    model = create_model("mobilenetv2").eval()
    for size in (28, 32):
        assert model.features(torch.randn(1, 3, size, size)).shape == (1, 1280, 4, 4)
    depthwise = [
        m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1
    ]
    assert len(depthwise) == 17
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert sum(block.use_residual for block in blocks) == 10


def test_mobilenetv2_width_mult_scales_widths_to_multiples_of_8() -> None:
    half = create_model("mobilenetv2", width_mult=0.5)
    full = create_model("mobilenetv2")
    assert half.features[0][0].out_channels == 16
    assert half.classifier[-1].in_features == 1280  # the last conv never shrinks
    assert all(m.out_channels % 8 == 0 for m in half.modules() if isinstance(m, nn.Conv2d))
    assert _params(half) < _params(full)
    with pytest.raises(ValueError, match="width_mult"):
        create_model("mobilenetv2", width_mult=0)


def test_kaiming_init_for_convs_and_neutral_batchnorm() -> None:
    torch.manual_seed(0)
    model = create_model("vgg16")
    conv = model.features[-3]  # 512 -> 512, 3x3: plenty of samples
    expected_std = math.sqrt(2.0 / (conv.out_channels * 9))  # fan_out, ReLU gain
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)
    bn = model.features[-2]
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    assert not bn.bias.any()


def test_vgg_width_scales_every_conv_and_quarters_the_macs_at_half_width() -> None:
    full = create_model("vgg11", in_channels=1)
    half = create_model("vgg11", in_channels=1, width=0.5)
    full_widths = [m.out_channels for m in full.modules() if isinstance(m, nn.Conv2d)]
    half_widths = [m.out_channels for m in half.modules() if isinstance(m, nn.Conv2d)]
    assert half_widths == [w // 2 for w in full_widths]
    x = torch.randn(1, 1, 28, 28)
    ratio = rp.count(half, x).macs / rp.count(full, x).macs
    assert 0.24 < ratio < 0.26  # conv MACs scale with in x out width; the stem has 1 input
    with pytest.raises(ValueError, match="width"):
        create_model("vgg11", width=0.0)
