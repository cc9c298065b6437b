"""A torchvision detector as users bring it: a list of images in, a list of detection dicts
out, data-dependent box filtering (no meta kernel for ``nonzero``, so traced for real)."""

from __future__ import annotations

import pytest
import torch

import regprune as rp
from regprune.structures import structure_mismatch

torchvision = pytest.importorskip("torchvision")


@pytest.mark.slow
def test_faster_rcnn_is_traced_and_planned_and_left_as_it_was() -> None:
    torch.manual_seed(0)
    detection = torchvision.models.detection
    model = detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None
    ).eval()
    model.roi_heads.score_thresh = 0.0  # random weights score low: keep boxes to compare
    image = torch.rand(3, 320, 320)
    with torch.no_grad():
        before = model([image])
    assert before[0]["boxes"].shape[0] > 0
    graph, plan = rp.make_plan(model, ([image],), ratio=0.3)
    assert plan.num_dropped() > 0.2 * sum(g.size for g in graph.groups)
    kept_whole = " ".join(str(u) for u in graph.unprunable)
    # the FPN maps feed roi_align (each channel pooled alone) and are gathered level by level:
    # prunable; what stays whole is the task's widths (anchors, box coordinates, classes)
    assert "roi_align" not in kept_whole
    assert not any(u.layer.startswith("backbone") for u in graph.unprunable)
    with torch.no_grad():
        after = model([image])
    assert structure_mismatch(after, before) is None
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(after, before, strict=True))


def test_a_graph_says_whether_its_trace_ran_on_meta() -> None:
    """A forward that reads values (``nonzero``, as a detector's box filtering) cannot run on
    the meta device: its graph says so, and the pruned model's check then runs for real only
    (a meta attempt would fail again, after most of a forward)."""

    class Filtering(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)
            self.head = torch.nn.Conv2d(8, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.head(self.conv(x))
            return y.flatten()[torch.nonzero(y.flatten() > -1e9).flatten()]

    x = torch.randn(1, 3, 8, 8)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 2, 1))
    assert rp.trace_graph(plain, x).traced_on_meta
    graph = rp.trace_graph(Filtering(), x)
    assert not graph.traced_on_meta
    result = rp.prune_with_result(Filtering(), x, ratio=0.5)
    assert result.model.conv.out_channels == 4
    assert result.model(x).shape == Filtering()(x).shape
