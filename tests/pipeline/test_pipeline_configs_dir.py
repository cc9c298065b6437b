"""Every shipped config in configs/ loads, and its method accepts its settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from regprune.cli import main as cli_main
from regprune.methods import available
from regprune.models import create_model
from regprune.pipeline import load_config
from regprune.pipeline.methods import build_method
from regprune.report import RunSummary
from tests.pipeline.tiny_run import needs_fashion_mnist, torch_globals_restored

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MODEL_OF = {"l0_weight": "lenet5", "l0_weight_vgg16": "vgg16"}
"""The papers' models for fine-grained L0 (LeNet-5, VGG-16); every other config prunes a
CIFAR-style ResNet-20."""


def method_of(stem: str) -> str:
    """``configs/<method>.yaml``, or ``<method>_<model>.yaml`` for a second model's recipe."""
    return "l0_weight" if stem == "l0_weight_vgg16" else stem


def test_there_is_a_config_per_method_and_a_quickstart():
    names = {path.stem for path in CONFIGS.glob("*.yaml")}
    assert set(available()) | {"quickstart"} <= names


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_a_shipped_config_builds_its_model_and_method(path: Path):
    config = load_config(path)
    model = create_model(config.model.name, num_classes=10, in_channels=1, **config.model.kwargs)

    method = build_method(config.method, model, torch.zeros(1, 1, 28, 28))

    assert method.model is model
    assert config.data.name == "fashion-mnist"
    assert config.model.name == MODEL_OF.get(path.stem, "resnet20")
    if path.stem != "quickstart":
        assert config.method.name == method_of(path.stem)
        assert config.output.run_dir == f"runs/{path.stem}"


TINY_OVERRIDES = [
    "device=cpu",
    "progress=false",
    "data.subset=160",
    "data.batch_size=32",
    "pretrain.epochs=1",
    "sparsify.epochs=1",
    "finetune.epochs=1",
    "prune.calibration_batches=2",
    "report.latency_batch_sizes=[1]",
    "report.latency_repeats=1",
    "report.latency_warmup=0",
]
SCHEDULE_OVERRIDES = {
    # GReg-2 refuses to prune before its picking phase ends (pick_ceiling / pick_delta x
    # update_every iterations): squeeze the phase into the few iterations of the tiny run.
    "greg2": ["method.kwargs.update_every=1", "method.kwargs.pick_delta=5.0e-3"],
}


@needs_fashion_mnist
@pytest.mark.parametrize(
    "path",
    sorted(p for p in CONFIGS.glob("*.yaml") if p.stem != "quickstart"),
    ids=lambda p: p.stem,
)
def test_every_shipped_config_runs_end_to_end_from_the_cli(path: Path, tmp_path: Path):
    """`regprune run configs/<method>.yaml` on a small real subset: every phase and a report."""
    run_dir = tmp_path / "run"
    with torch_globals_restored():
        overrides = [*TINY_OVERRIDES, *SCHEDULE_OVERRIDES.get(path.stem, [])]
        code = cli_main(["run", str(path), *overrides, "--run-dir", str(run_dir), "-q"])
    assert code == 0
    summary = RunSummary.load(run_dir)
    assert summary.method == method_of(path.stem)
    assert (run_dir / "report.md").is_file()
    assert summary.macs_after <= summary.macs_before
    if summary.macs_after == summary.macs_before and summary.ratio is not None:
        assert summary.weight_sparsity >= 0.99 * summary.ratio  # unstructured: zeros, not channels
