"""Every shipped config in configs/ loads, and its method accepts its settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from regprune.methods import available
from regprune.models import create_model
from regprune.pipeline import load_config
from regprune.pipeline.methods import build_method

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_there_is_a_config_per_method_and_a_quickstart():
    names = {path.stem for path in CONFIGS.glob("*.yaml")}
    assert set(available()) | {"quickstart"} <= names


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_a_shipped_config_builds_its_model_and_method(path: Path):
    config = load_config(path)
    model = create_model(config.model.name, num_classes=10, in_channels=1, **config.model.kwargs)

    method = build_method(config.method, model, torch.zeros(1, 1, 28, 28))

    assert method.model is model
    assert config.data.name == "fashion-mnist" and config.model.name == "resnet20"
    if path.stem != "quickstart":
        assert config.method.name == path.stem
        assert config.output.run_dir == f"runs/{path.stem}"
