"""The exactness contract's second clause: channels whose output is constant are removed with the
outputs unchanged (their value is folded into the layers that read them)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import regprune as rp
from regprune.api import make_plan
from regprune.models import create_model
from regprune.surgery import (
    apply_plan,
    apply_plan_with_report,
    rebuild_optimizer,
    silence_channels,
)
from regprune.surgery.compensate import probe_inputs
from tests.exactness import exact_plan
from tests.zoo import ZOO, randomize_norms


def with_biases(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random nonzero biases everywhere, so that silenced channels send real constants."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            bias = getattr(module, "bias", None)
            if isinstance(bias, nn.Parameter):
                bias.copy_(torch.rand(bias.shape, generator=generator) + 0.2)
    return model


def replicate_padding(model: nn.Module) -> nn.Module:
    """Pad convs by replicating the border: a constant channel stays constant in its padding, so
    the fold is exact at the border too (with zero padding it is exact in the interior)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and any(p > 0 for p in module.padding):
            module.padding_mode = "replicate"
    return model


def max_error(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a.eval()(x) - b.eval()(x)).abs().max())


def check_constant_clause(model: nn.Module, x: torch.Tensor, ratio: float = 0.5) -> float:
    """Silence a plan's channels, remove them with and without the fold; return the error ratio."""
    model = model.eval()
    graph, plan = exact_plan(model, x[:1], ratio)
    assert plan.num_dropped() > 0
    silenced = silence_channels(model, graph, plan).eval()
    pruned, report = apply_plan_with_report(silenced, graph, plan)
    assert report.folded_inputs == report.constant_inputs == report.removed_inputs
    assert not report.not_foldable
    with torch.no_grad():
        scale = float(silenced(x).abs().max().clamp(min=1.0))
    folded = max_error(pruned, silenced, x)
    dropped = max_error(apply_plan(silenced, graph, plan, compensate=None), silenced, x)
    assert folded <= 1e-4 * scale, f"max abs diff {folded:.3g} with compensation"
    return dropped / scale


@pytest.mark.parametrize("name", sorted(set(ZOO) - {"se_block"}))
def test_zoo_models_lose_nothing_when_constant_channels_go(name: str) -> None:
    model, x = ZOO[name]()
    model = replicate_padding(with_biases(randomize_norms(model)))
    check_constant_clause(model, x)


def test_a_strided_transposed_conv_is_named_as_not_foldable() -> None:
    # a stride-2 ConvTranspose spreads a constant input into a periodic pattern: no bias can
    # stand for it, so the channels it reads are dropped as they are and the report says so
    model, x = ZOO["se_block"]()
    model = replicate_padding(with_biases(randomize_norms(model))).eval()
    graph, plan = exact_plan(model, x[:1], 0.5)
    _, report = apply_plan_with_report(silence_channels(model, graph, plan), graph, plan)
    assert [entry.split(" ")[0] for entry in report.not_foldable] == ["up"]
    assert "no bias can stand for it" in report.not_foldable[0]
    assert 0 < report.folded_inputs < report.constant_inputs


PAPER_MODELS = [
    ("resnet20", {"shortcut": "A"}),
    ("resnet20", {"shortcut": "B"}),
    ("vgg16", {}),
    ("mobilenetv2", {}),
    ("lenet5", {}),
]


@pytest.mark.parametrize(("name", "kwargs"), PAPER_MODELS)
def test_paper_models_lose_nothing_when_constant_channels_go(name: str, kwargs: dict) -> None:
    model = create_model(name, num_classes=10, in_channels=3, **kwargs)
    model = replicate_padding(with_biases(randomize_norms(model)))
    # without the fold the same removal is far from exact: the test can fail
    assert check_constant_clause(model, torch.randn(2, 3, 32, 32)) > 1e-2


TORCHVISION = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf", "googlenet"]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_models_lose_nothing_when_constant_channels_go(name: str) -> None:
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    model = torchvision.models.get_model(name, num_classes=10, **kwargs)
    model = replicate_padding(with_biases(randomize_norms(model)))
    check_constant_clause(model, torch.randn(2, 3, 64, 64))


def test_one_by_one_and_linear_consumers_are_exact_with_zero_padding() -> None:
    # MobileNetV2: every layer that reads a removable channel is a 1x1 conv or the classifier
    # (depthwise convs lose their channels whole): no border, so exact as it is
    model = with_biases(randomize_norms(torchvision.models.mobilenet_v2(num_classes=10)))
    check_constant_clause(model, torch.randn(2, 3, 64, 64))


def test_zero_padded_kxk_consumers_keep_a_border_error_smaller_than_dropping() -> None:
    model = with_biases(randomize_norms(create_model("resnet20", num_classes=10, in_channels=3)))
    x = torch.randn(2, 3, 32, 32)
    graph, plan = make_plan(model.eval(), x[:1], ratio=0.5, importance="random")
    silenced = silence_channels(model, graph, plan).eval()
    folded = max_error(apply_plan(silenced, graph, plan), silenced, x)
    dropped = max_error(apply_plan(silenced, graph, plan, compensate=None), silenced, x)
    assert 0 < folded < 0.5 * dropped


def test_mean_replacement_keeps_the_mean_output_over_the_calibration_data() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(64, 8)
    graph, plan = make_plan(model, x[:1], ratio=0.5, importance="random")
    mean = apply_plan(model, graph, plan, compensate="mean", calibration=[(x, None)])
    dropped = apply_plan(model, graph, plan, compensate=None)
    with torch.no_grad():
        want = model(x).mean(0)
        assert torch.allclose(mean(x).mean(0), want, atol=1e-5)
        assert not torch.allclose(dropped(x).mean(0), want, atol=1e-2)
    # the removed hidden units vary: the data-free default leaves them alone
    constant = apply_plan(model, graph, plan)
    assert torch.equal(constant[2].bias, dropped[2].bias)


def test_compensate_arguments_are_checked() -> None:
    model = create_model("lenet5", num_classes=10, in_channels=1)
    x = torch.randn(1, 1, 28, 28)
    with pytest.raises(ValueError, match="compensate must be one of"):
        rp.prune(model, x, ratio=0.5, compensate="zero")
    with pytest.raises(ValueError, match="pass calibration="):
        rp.prune(model, x, ratio=0.5, compensate="mean")


def test_a_created_bias_saves_loads_and_trains(tmp_path) -> None:
    model = with_biases(randomize_norms(create_model("resnet20", num_classes=10, in_channels=1)))
    x = torch.randn(2, 1, 28, 28)
    graph, plan = make_plan(model.eval(), x[:1], ratio=0.5, importance="random")
    silenced = silence_channels(model, graph, plan).eval()
    pruned = apply_plan(silenced, graph, plan)
    assert silenced.layer1[0].conv2.bias is None and pruned.layer1[0].conv2.bias is not None
    rp.save_pruned(pruned, tmp_path / "small.pt")
    loaded = rp.load_pruned(
        create_model("resnet20", num_classes=10, in_channels=1), tmp_path / "small.pt"
    )
    assert max_error(loaded, pruned, x) == 0.0
    optimizer = torch.optim.SGD(silenced.parameters(), lr=0.1, momentum=0.9)
    rebuilt = rebuild_optimizer(optimizer, silenced, pruned, graph, plan)
    trained = {id(p) for group in rebuilt.param_groups for p in group["params"]}
    assert id(pruned.layer1[0].conv2.bias) in trained


def test_calibration_batches_of_a_two_input_model_and_bad_batches() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x))) * scale

    torch.manual_seed(0)
    model = TwoInputs().eval()
    x, scale = torch.randn(32, 4), torch.ones(32, 1)
    graph, plan = make_plan(model, (x[:1], scale[:1]), ratio=0.5, importance="random")
    mean = apply_plan(model, graph, plan, compensate="mean", calibration=[((x, scale), None)])
    with torch.no_grad():
        assert torch.allclose(mean(x, scale).mean(0), model(x, scale).mean(0), atol=1e-5)
    with pytest.raises(TypeError, match="calibration batches must be input tensors or"):
        apply_plan(model, graph, plan, compensate="mean", calibration=[3])
    # a DataLoader's default collation yields ((x, scale), y) as [[x, scale], y]
    samples = [((x[i], scale[i]), 0) for i in range(32)]
    loader = torch.utils.data.DataLoader(samples, batch_size=32)
    collated = apply_plan(model, graph, plan, compensate="mean", calibration=loader)
    assert torch.equal(collated.b.bias, mean.b.bias)


def test_the_probe_perturbs_every_floating_tensor_wherever_it_is_nested() -> None:
    """A detector's images sit in a list inside the first argument; token ids and constants
    must reach the model as they were."""
    image, ids = torch.rand(3, 8, 8), torch.arange(4)
    (first, _), (perturbed, _) = probe_inputs(([image], ids, 2.0))
    assert first.args[0][0] is image and first.args[1] is ids
    assert (
        not torch.equal(perturbed.args[0][0], image) and perturbed.args[0][0].shape == image.shape
    )
    assert perturbed.args[1] is ids and perturbed.args[2] == 2.0


def test_a_stride_one_transposed_conv_takes_the_fold() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.ConvTranspose2d(8, 4, 1),  # weight (in, out, 1, 1): the transposed layout
    )
    model = with_biases(randomize_norms(model)).eval()
    x = torch.randn(2, 3, 8, 8)
    graph, plan = exact_plan(model, x[:1], 0.5)
    silenced = silence_channels(model, graph, plan).eval()
    pruned, report = apply_plan_with_report(silenced, graph, plan)
    assert report.folded_inputs == report.removed_inputs > 0 and not report.not_foldable
    assert max_error(pruned, silenced, x) <= 1e-5
    assert max_error(apply_plan(silenced, graph, plan, compensate=None), silenced, x) > 1e-2


def test_an_empty_input_is_no_evidence_and_is_skipped() -> None:
    """A detector's head sees zero boxes on some images: the statistics skip that call instead of
    failing on a reduction over nothing (seen in CI on keypointrcnn)."""
    from regprune.surgery.compensate import InputStats

    stats = InputStats()
    stats.add(torch.empty(0, 4, 3, 3), dim=1)
    assert stats.total is None and stats.count == 0
    stats.add(torch.ones(2, 4, 3, 3), dim=1)
    stats.add(torch.empty(0, 4, 3, 3), dim=1)
    assert stats.count == 18
    assert torch.equal(stats.total, torch.full((4,), 18.0, dtype=torch.float64))
