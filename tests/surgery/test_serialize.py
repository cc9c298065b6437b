"""Pruned models save and load with weights_only=True, and wrong files are refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import regprune as rp
from regprune.models import create_model

X = torch.randn(2, 3, 32, 32)


def test_round_trip_restores_the_pruned_model(tmp_path: Path) -> None:
    small = rp.prune(create_model("mobilenetv2", num_classes=10), X, target_macs=0.5).eval()
    path = tmp_path / "small.pt"
    rp.save_pruned(small, path)
    torch.load(path, weights_only=True)  # readable without pickle
    loaded = rp.load_pruned(create_model("mobilenetv2", num_classes=10), path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(X), small(X))
    assert rp.count(loaded, X).macs == rp.count(small, X).macs
    assert not list(tmp_path.glob("*.tmp"))


def test_loading_into_another_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "small.pt"
    rp.save_pruned(rp.prune(create_model("resnet20"), X, ratio=0.5), path)
    with pytest.raises(ValueError, match="holds a pruned CifarResNet"):
        rp.load_pruned(create_model("vgg11"), path)
    with pytest.raises(ValueError, match="has tensors the saved one lacks"):
        rp.load_pruned(create_model("resnet56"), path)


def test_a_plain_checkpoint_is_not_taken_for_a_pruned_model(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(create_model("resnet20").state_dict(), path)
    with pytest.raises(ValueError, match="not a regprune pruned model"):
        rp.load_pruned(create_model("resnet20"), path)
