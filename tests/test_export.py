"""A pruned ResNet-20 exports to ONNX and torch.compile with the outputs it has in PyTorch."""

from __future__ import annotations

import copy
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

import regprune
from regprune.export import ExportCheckError, check_compile, check_onnx, export_onnx
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


@pytest.mark.slow
def test_check_compile_inductor_matches_eager(pruned: nn.Module) -> None:
    """30-60 s on one CPU core with a cold cache: Inductor compiles C++ kernels on first use."""
    assert check_compile(pruned, torch.randn(3, 1, 28, 28)) <= 1e-4
