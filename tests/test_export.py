"""Pruned models export to ONNX and torch.compile with the outputs they have in PyTorch:
a ResNet-20 in detail, then one model of each family (ResNet, MobileNet, DenseNet, ViT)."""

from __future__ import annotations

import copy
from pathlib import Path

import onnx
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import VisionTransformer

import regprune
from regprune.export import ExportCheckError, check_compile, check_onnx, export_onnx
from regprune.inputs import CallArgs
from regprune.models import create_model

EXAMPLE = torch.randn(1, 1, 28, 28)


@pytest.fixture(scope="module")
def pruned() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1)
    # Non-trivial BN statistics, so a train/eval mix-up in export would show in the outputs.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 1, 28, 28))
    small = regprune.prune(model, EXAMPLE, ratio=0.5)
    assert regprune.count(small, EXAMPLE).macs < 0.5 * regprune.count(model, EXAMPLE).macs
    return small


@pytest.fixture(scope="module")
def onnx_file(pruned: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(pruned, EXAMPLE, tmp_path_factory.mktemp("onnx") / "m.onnx")


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_matches_pytorch(pruned: nn.Module, onnx_file: Path, batch: int) -> None:
    diff = check_onnx(pruned, torch.randn(batch, 1, 28, 28), onnx_file)
    assert 0.0 <= diff <= 1e-4


def test_onnx_file_has_symbolic_batch_dim_and_opset(onnx_file: Path) -> None:
    graph = onnx.load(str(onnx_file))
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["input_0"]
    for value in (*graph.graph.input, *graph.graph.output):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch"
    assert graph.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 1
    assert graph.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 10
    assert {o.domain: o.version for o in graph.opset_import}[""] == 17


def test_export_restores_every_modules_mode(pruned: nn.Module, tmp_path: Path) -> None:
    model = copy.deepcopy(pruned).train()
    model.fc.eval()  # a mixed state must come back as it was, not as all-train
    export_onnx(model, EXAMPLE, tmp_path / "m.onnx")
    assert model.training and not model.fc.training
    assert all(m.training for name, m in model.named_modules() if not name.startswith("fc"))


def test_check_onnx_reports_a_mismatch(pruned: nn.Module, onnx_file: Path) -> None:
    other = copy.deepcopy(pruned)
    with torch.no_grad():
        other.fc.bias.add_(0.01)
    message = r"differs from PyTorch by up to 0\.01.*atol=0\.0001"
    with pytest.raises(ExportCheckError, match=message):
        check_onnx(other, torch.randn(2, 1, 28, 28), onnx_file)


def test_check_onnx_needs_the_file(pruned: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "none.onnx")):
        check_onnx(pruned, torch.randn(1, 1, 28, 28), tmp_path / "none.onnx")


def test_check_compile_graph_capture_is_exact(pruned: nn.Module) -> None:
    """The fast path: Dynamo capture with the eager backend (no code generation)."""
    model = copy.deepcopy(pruned).train()
    assert check_compile(model, torch.randn(2, 1, 28, 28), backend="eager") == 0.0
    assert model.training


def test_nested_and_keyword_inputs_export_with_only_the_arguments_batch_first(
    tmp_path: Path,
) -> None:
    """A list argument's tensors and keyword arguments become ONNX inputs too; the batch axis is
    symbolic on the arguments that are tensors themselves, not on tensors inside a list."""

    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor, extra: list[torch.Tensor], mask: torch.Tensor):
            return self.conv(x + extra[0]) * mask

    model = Masked().eval()
    extra = [torch.randn(1, 3, 4, 4)]
    example = CallArgs(torch.randn(1, 3, 4, 4), extra, mask=torch.ones(1, 4, 4, 4))
    path = export_onnx(model, example, tmp_path / "masked.onnx")
    assert check_onnx(model, example, path) <= 1e-5
    batch_of_three = CallArgs(torch.randn(3, 3, 4, 4), extra, mask=torch.rand(3, 4, 4, 4))
    assert check_onnx(model, batch_of_three, path) <= 1e-5
    inputs = onnx.load(str(path)).graph.input
    first_dims = [i.type.tensor_type.shape.dim[0] for i in inputs]
    dims = [d.dim_param or d.dim_value for d in first_dims]
    assert dims == ["batch", 1, "batch"]
    assert check_compile(model, example, backend="eager") == 0.0


@pytest.mark.slow
def test_check_compile_inductor_matches_eager(pruned: nn.Module) -> None:
    """30-60 s on one CPU core with a cold cache: Inductor compiles C++ kernels on first use."""
    assert check_compile(pruned, torch.randn(3, 1, 28, 28)) <= 1e-4


def tiny_vit() -> VisionTransformer:
    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=10,
    )  # fmt: skip


FAMILIES = {
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), 64),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), 64),
    "densenet121": (lambda: torchvision.models.densenet121(num_classes=10), 64),
    "vit_tiny": (tiny_vit, 32),
}


def with_input_dependent_outputs(model: nn.Module, size: int) -> nn.Module:
    """BN statistics of real batches, and a ViT head that is not all zeros.

    With torchvision's initial BN statistics (mean 0, var 1) a MobileNetV2's output hardly
    depends on its input (1e-8 between two random images), and the ViT's zero-initialised head
    outputs zeros: comparing such outputs would check nothing.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average: the statistics of the batches below
        model.train()
        for _ in range(2):
            model(torch.randn(16, 3, size, size))
        for norm in norms:
            norm.momentum = 0.1
        if isinstance(model, VisionTransformer):
            nn.init.normal_(model.heads.head.weight, std=0.1)
    return model.eval()


def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[bool]]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return state, [m.training for m in model.modules()]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_pruned_families_run_in_onnxruntime_with_pytorchs_outputs(
    family: str, tmp_path: Path
) -> None:
    build, size = FAMILIES[family]
    torch.manual_seed(0)
    model = with_input_dependent_outputs(build(), size)
    example = torch.randn(1, 3, size, size)
    small = regprune.prune(model, example, ratio=0.3)
    assert regprune.count(small, example).params < regprune.count(model, example).params
    small.train()  # export must use eval mode and give the caller's mode back
    state, modes = _snapshot(small)

    path = export_onnx(small, example, tmp_path / f"{family}.onnx")

    onnx.checker.check_model(onnx.load(str(path)))
    assert _snapshot(small)[1] == modes
    assert all(torch.equal(value, state[key]) for key, value in small.state_dict().items())
    batch = torch.randn(3, 3, size, size)  # another batch size than the export's
    with torch.no_grad():
        outputs = small.eval()(batch)
    assert (outputs[0] - outputs[1]).abs().max() > 1e-2  # the outputs depend on the input
    assert check_onnx(small, batch, path) <= 1e-4


@pytest.mark.parametrize("fastpath", [True, False])
def test_attention_exports_through_its_composite_path_and_the_switch_comes_back(
    fastpath: bool, tmp_path: Path
) -> None:
    """Eval mode under no_grad is when nn.MultiheadAttention takes its fused fast path, an op
    the ONNX exporter cannot translate; export_onnx turns the fast path off while it runs."""
    torch.manual_seed(0)
    model = with_input_dependent_outputs(tiny_vit(), 32)
    example = torch.randn(1, 3, 32, 32)
    small = regprune.prune(model, example, ratio=0.3)
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(fastpath)
    try:
        path = export_onnx(small, example, tmp_path / "vit.onnx")
        assert torch.backends.mha.get_fastpath_enabled() is fastpath
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"MatMul", "Softmax"} <= ops
    assert check_onnx(small, torch.randn(2, 3, 32, 32), path) <= 1e-4
