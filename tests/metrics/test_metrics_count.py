"""count(): exact hand-computed MACs, published torchvision values, and a side-effect-free run."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights

from regprune.inputs import CallArgs
from regprune.layers import macs_formula_for, rule_for
from regprune.metrics import LayerCount, MacsCounter, ModelCount, count, format_count
from regprune.models import create_model
from regprune.modes import eval_mode


class ConvBnLinear(nn.Module):
    """Small enough to count by hand (see the test that uses it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


def _published(name: str) -> dict:
    """torchvision's own metadata (``_ops`` is GMACs); reading it downloads nothing."""
    return get_model_weights(name).DEFAULT.meta


def test_tiny_conv_linear_model_exact_integers() -> None:
    result = count(ConvBnLinear(), torch.randn(1, 3, 8, 8), per_layer=True)
    conv_macs = (8 * 8 * 8) * 3 * 9  # output elements * in_channels * kernel
    fc_macs = 512 * 10
    assert result.macs == conv_macs + fc_macs == 18_944
    assert result.flops == 2 * result.macs
    assert result.params == (8 * 27 + 8) + (8 + 8) + (512 * 10 + 10) == 5_370
    by_name = {layer.name: layer for layer in result.per_layer}
    assert [layer.name for layer in result.per_layer] == ["conv", "bn", "fc"]
    assert by_name["bn"].macs == 0  # norms are not MACs under our convention
    assert by_name["bn"].params == 16
    assert by_name["conv"].output_shape == (1, 8, 8, 8)
    assert by_name["fc"].flops == 2 * fc_macs
    assert result.unattributed_macs == 0


def test_macs_scale_with_batch_and_per_layer_is_opt_in() -> None:
    model = ConvBnLinear()
    single = count(model, torch.randn(1, 3, 8, 8))
    assert single.per_layer == ()
    assert count(model, torch.randn(4, 3, 8, 8)).macs == 4 * single.macs


def test_linear_counts_every_token() -> None:
    result = count(nn.Linear(16, 4), torch.randn(2, 5, 16))
    assert result.macs == 2 * 5 * 16 * 4


@pytest.mark.parametrize(
    ("layer", "spatial", "expected"),
    [
        # depthwise: output elements * (in/groups = 1) * 9
        (nn.Conv2d(4, 4, 3, padding=1, groups=4), (6, 6), 4 * 36 * 9),
        (nn.Conv1d(4, 8, 3, groups=2), (10,), 8 * 8 * 2 * 3),
        (nn.Conv3d(2, 3, 2), (4, 4, 4), 3 * 27 * 2 * 8),
        # transposed: input elements * (out/groups) * kernel; not output-side (4x larger here)
        (
            nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
            (5, 5),
            4 * 25 * 3 * 9,
        ),
    ],
)
def test_convolution_family_formulas(layer: nn.Module, spatial: tuple, expected: int) -> None:
    x = torch.randn(1, layer.in_channels, *spatial)
    assert count(layer, x).macs == expected


CONV_AND_LINEAR = [
    (nn.Conv2d(4, 4, 3, padding=1, groups=4), (1, 4, 6, 6)),
    (nn.Conv1d(4, 8, 3, groups=2), (2, 4, 10)),
    (nn.Conv2d(3, 5, 3, stride=2), (1, 3, 9, 9)),
    (nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2), (1, 4, 5, 5)),
    (nn.Linear(6, 3), (2, 5, 6)),
]


@pytest.mark.parametrize(("layer", "shape"), CONV_AND_LINEAR)
def test_the_counting_formula_and_the_slicing_rules_macs_unit_agree(
    layer: nn.Module, shape: tuple
) -> None:
    # the allocator prices a plan with macs_unit * in * out / groups (from tracing) and reports
    # MACs from the count: one layer, two views, one number
    x = torch.randn(shape)
    y = layer(x)
    rule, formula = rule_for(layer), macs_formula_for(layer)
    assert rule is not None and formula is not None
    in_channels, out_channels = rule.input_channels(layer), rule.output_channels(layer)
    per_pair = rule.macs_unit(layer, x, y)
    assert per_pair * in_channels * out_channels / rule.groups(layer) == formula(layer, (x,), {}, y)


def test_a_counter_counts_the_forward_its_caller_runs() -> None:
    model = create_model("resnet20").train()
    x = torch.randn(2, 3, 32, 32)
    with eval_mode(model), torch.no_grad(), MacsCounter(model) as counter:
        output = model(x)
    assert counter.result(per_layer=True) == count(model, x, per_layer=True)
    with torch.no_grad():
        assert torch.equal(output, model.eval()(x))  # the counted forward is the model's own
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _mha_macs(batch: int, target: int, source: int, embed: int, kdim: int, vdim: int) -> int:
    projections = batch * (target * embed + source * kdim + source * vdim) * embed
    attention = 2 * batch * target * source * embed
    return projections + attention + batch * target * embed * embed


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_counts_projections_and_both_matmuls(batch_first: bool) -> None:
    # batch_first=True in eval takes PyTorch's fused fast path, invisible to op-level counting;
    # the rule must still give the same number.
    attention = nn.MultiheadAttention(32, 4, batch_first=batch_first)
    x = torch.randn(3, 7, 32) if batch_first else torch.randn(7, 3, 32)
    result = count(attention, (x, x, x), per_layer=True)
    assert result.macs == _mha_macs(3, 7, 7, 32, 32, 32)
    assert result.params == 4 * 32 * 32 + 4 * 32
    assert [layer.name for layer in result.per_layer] == [""]  # out_proj is not double counted


def test_multihead_attention_cross_attention_with_kdim_vdim_called_by_keyword() -> None:
    class CrossAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, kdim=8, vdim=12)

        def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
            return self.attn(query=q, key=kv[..., :8], value=kv, need_weights=False)[0]

    q, kv = torch.randn(5, 2, 16), torch.randn(9, 2, 12)
    assert count(CrossAttention(), (q, kv)).macs == _mha_macs(2, 5, 9, 16, 8, 12)


def test_functional_matmuls_are_counted_at_op_level() -> None:
    class FunctionalAttention(nn.Module):
        """Attention written with F.* in a container's forward, as Swin and MaxViT do."""

        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(16, 48)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            return F.scaled_dot_product_attention(q, k, v) + F.linear(x, self.qkv.weight[:16])

    class FunctionalLeaf(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 16))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.weight.T

    model = nn.Sequential(FunctionalAttention(), FunctionalLeaf())
    result = count(model, torch.randn(2, 6, 16), per_layer=True)
    tokens = 2 * 6
    qkv, sdpa, side_linear = tokens * 16 * 48, 2 * 2 * 6 * 6 * 16, tokens * 16 * 16
    assert result.unattributed_macs == sdpa + side_linear
    by_name = {layer.name: layer for layer in result.per_layer}
    assert by_name["0.qkv"].macs == qkv
    assert by_name["1"].macs == tokens * 16 * 4  # a leaf without a rule: its ops are its MACs
    assert result.macs == qkv + sdpa + side_linear + tokens * 16 * 4
    assert result.macs == sum(layer.macs for layer in result.per_layer) + result.unattributed_macs


def test_torchvision_resnet50_on_cpu_matches_published_numbers() -> None:
    torch.manual_seed(0)
    result = count(torchvision.models.resnet50(), torch.randn(1, 3, 224, 224))
    assert result.macs / 1e9 == pytest.approx(4.09, abs=0.01)
    assert result.macs / 1e9 == pytest.approx(_published("resnet50")["_ops"], abs=5e-4)
    assert result.params == _published("resnet50")["num_params"] == 25_557_032
    assert format_count(result.macs) == "4.09 G"
    assert format_count(result.params) == "25.56 M"


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vit_b_16", "swin_t", "maxvit_t"])
def test_torchvision_models_on_meta_match_published_gmacs(name: str) -> None:
    # The meta device makes these instant: shapes only, no memory, no arithmetic.
    with torch.device("meta"):
        model = get_model(name, weights=None)
        x = torch.randn(1, 3, 224, 224)
    result = count(model, x)
    published = _published(name)
    assert result.macs / 1e9 == pytest.approx(published["_ops"], abs=5e-4)
    assert result.params == published["num_params"]
    if name == "resnet18":
        assert result.macs / 1e9 == pytest.approx(1.82, abs=0.01)
        assert format_count(result.params) == "11.69 M"
    if name == "maxvit_t":
        assert result.unattributed_macs > 0  # its attention is functional
    if name == "swin_t":  # functional too, but its window attention has a formula
        assert result.unattributed_macs == 0


@pytest.mark.parametrize(
    ("name", "expected_macs"),
    [("resnet20", 40_551_040), ("resnet56", 125_485_696)],  # the papers' 40.55 M / 125.49 M
)
def test_cifar_resnets_with_shortcut_a_match_published_macs(name: str, expected_macs: int) -> None:
    model = create_model(name, shortcut="A")
    assert count(model, torch.randn(1, 3, 32, 32)).macs == expected_macs


def test_tied_weights_are_counted_once() -> None:
    class TiedLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 8)
            self.head = nn.Linear(8, 50, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(tokens))

    result = count(TiedLM(), torch.randint(0, 50, (2, 3)), per_layer=True)
    assert result.params == 50 * 8
    assert sum(layer.params for layer in result.per_layer) == 50 * 8
    assert result.macs == 2 * 3 * 8 * 50


def test_shared_module_counts_every_call() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.fc(x))

    (layer,) = count(Twice(), torch.randn(1, 4), per_layer=True).per_layer
    assert (layer.calls, layer.macs, layer.params) == (2, 2 * 16, 20)


def test_two_positional_inputs() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(5, 2)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(y)

    assert count(Pair(), (torch.randn(1, 3), torch.randn(1, 5))).macs == 3 * 2 + 5 * 2


def test_nested_and_keyword_inputs_reach_the_model() -> None:
    """A list of images (a detector's argument) and keyword arguments are passed as given: each
    image is counted, and the keyword input changes the count as it changes the forward."""

    class PerImage(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1, bias=False)

        def forward(self, images: list[torch.Tensor], twice: bool = False) -> list[torch.Tensor]:
            outputs = [self.conv(image[None]) for image in images]
            if twice:
                outputs = [o + self.conv(i[None]) for o, i in zip(outputs, images, strict=True)]
            return outputs

    model = PerImage()
    images = [torch.randn(3, 2, 2), torch.randn(3, 4, 4)]
    assert count(model, (images,)).macs == 12 * (4 + 16)
    assert count(model, CallArgs(images, twice=True)).macs == 2 * 12 * (4 + 16)


def test_callers_mixed_train_eval_modes_are_restored_and_hooks_removed() -> None:
    model = create_model("resnet20").train()
    model.layer2.eval()
    before = {name: m.training for name, m in model.named_modules()}
    count(model, torch.randn(1, 3, 32, 32))
    assert {name: m.training for name, m in model.named_modules()} == before
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_count_runs_in_eval_mode_so_batch_statistics_are_untouched() -> None:
    model = ConvBnLinear().train()
    count(model, torch.randn(1, 3, 8, 8))
    assert model.bn.num_batches_tracked.item() == 0
    assert model.training


def test_modes_restored_and_hooks_removed_when_the_forward_fails() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(5, 1)).train()
    with pytest.raises(RuntimeError):
        count(model, torch.randn(1, 4))
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_bad_example_inputs_are_rejected_early() -> None:
    with pytest.raises(TypeError, match="example_inputs"):
        count(nn.Linear(2, 2), {"x": torch.randn(1, 2)})  # type: ignore[arg-type]


def test_table_has_named_columns_rows_and_total() -> None:
    table = count(ConvBnLinear(), torch.randn(1, 3, 8, 8), per_layer=True).table()
    header, *_ = table.splitlines()
    assert header.split() == ["layer", "type", "output", "MACs", "FLOPs", "params"]
    assert "conv" in table and "Conv2d" in table and "1x8x8x8" in table
    total = table.splitlines()[-1].split()
    assert total[0] == "total"
    assert total[1:] == ["18.94", "K", "37.89", "K", "5.37", "K"]


def test_results_are_frozen() -> None:
    result = count(nn.Linear(2, 2), torch.randn(1, 2), per_layer=True)
    assert isinstance(result, ModelCount) and isinstance(result.per_layer[0], LayerCount)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.macs = 0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (4_089_184_256, "4.09 G"),
        (25_557_032, "25.56 M"),
        (1_500, "1.50 K"),
        (999, "999"),
        (0, "0"),
        (2.5e12, "2.50 T"),
    ],
)
def test_format_count(value: float, text: str) -> None:
    assert format_count(value) == text


def test_a_parameter_view_given_to_a_module_under_no_grad_is_counted() -> None:
    """timm's PiT and CaiT pass ``cls_token.expand(...)`` to a module: a view of a parameter
    made under ``no_grad`` requires grad but has no grad function, which torch's module
    tracker (inside FlopCounterMode) cannot hook."""

    class TokenNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token = nn.Parameter(torch.randn(1, 1, 8))
            self.mix = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.token.expand(x.shape[0], -1, -1)
            return self.mix(tokens) + x

    model, x = TokenNet(), torch.randn(2, 1, 8)
    assert count(model, x).macs == 2 * 8 * 8


def test_op_flops_agrees_with_torch_flop_counter_on_every_formulated_op() -> None:
    """OpFlops calls torch's formulas on shapes it makes itself (no pytree walk): on convs,
    transposed convs, every matmul form, einsum and attention it must give FlopCounterMode's
    total, per op kind as well as in sum."""
    from torch.utils.flop_counter import FlopCounterMode

    from regprune.metrics.count import EXTRA_OP_FORMULAS, OpFlops

    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 9)
    seq = torch.randn(2, 5, 8)
    calls = [
        lambda: F.conv2d(x, torch.randn(4, 3, 3, 3), stride=2, padding=1),
        lambda: F.conv2d(x, torch.randn(6, 1, 3, 3), groups=3),
        lambda: F.conv_transpose2d(x, torch.randn(3, 2, 2, 2), stride=2),
        lambda: F.conv1d(seq, torch.randn(4, 5, 3)),
        lambda: seq @ torch.randn(8, 7),
        lambda: torch.mm(torch.randn(4, 6), torch.randn(6, 3)),
        lambda: torch.addmm(torch.randn(3), torch.randn(4, 6), torch.randn(6, 3)),
        lambda: torch.bmm(seq, seq.transpose(1, 2)),
        lambda: torch.baddbmm(torch.randn(2, 5, 5), seq, seq.transpose(1, 2)),
        lambda: torch.einsum("bnc,bmc->bnm", seq, seq),
        lambda: F.linear(seq, torch.randn(3, 8), torch.randn(3)),
        lambda: F.scaled_dot_product_attention(seq, seq, seq),
    ]
    for call in calls:
        with (
            torch.no_grad(),
            FlopCounterMode(display=False, custom_mapping=EXTRA_OP_FORMULAS) as ref,
        ):
            call()
        with torch.no_grad(), OpFlops() as ours:
            call()
        assert ref.get_total_flops() > 0
        assert ours.get_total_flops() == ref.get_total_flops()
