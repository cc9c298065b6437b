"""examples/prune_detector.py: the regularize -> prune -> fine-tune loop for a detector, run on
tiny synthetic images (issue 15: training beyond classification)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torchvision.models import detection

import regprune as rp
from tests.fingerprint import assert_same_fingerprint, fingerprint

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "prune_detector.py"


def load_example():
    spec = importlib.util.spec_from_file_location("prune_detector", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_a_detector_is_regularized_pruned_and_fine_tuned_and_still_detects() -> None:
    example = load_example()
    torch.manual_seed(0)
    model = detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3
    )
    before = fingerprint(model)
    images = [example.synthetic_boxes(999, size=64)[0]]
    data = example.batches(lambda i: example.synthetic_boxes(i, size=64), batch_size=2)
    pruned, report = example.prune_detector(
        model, images, data, target_macs=0.7, steps=6, finetune_steps=2
    )
    assert_same_fingerprint(before, fingerprint(model))  # the caller's model is untouched
    assert report["macs_after"] <= 0.7 * report["macs_before"]
    assert rp.count(pruned, (images,)).macs == report["macs_after"]
    assert all(torch.isfinite(torch.tensor(report["sparsify_losses"] + report["finetune_losses"])))
    assert report["removal"]["strength_mode"] == "budget"
    detections = pruned.eval()(images)
    assert set(detections[0]) == {"boxes", "scores", "labels"}
    assert detections[0]["boxes"].shape[-1] == 4  # the task's widths stay
    # the pruned detector still trains: its losses come back as a dict of finite scalars
    pruned.train()
    samples = [example.synthetic_boxes(i, size=64) for i in (5, 6)]
    losses = pruned([s[0] for s in samples], [s[1] for s in samples])
    assert losses and all(torch.isfinite(v) for v in losses.values())
