"""timm models of several families prune with default arguments, shrink, and are exact.

benchmarks/timm_coverage.py runs the same check over one model per family of the whole zoo;
these are the families most users bring, small variants at a small input so the test is fast.
"""

from __future__ import annotations

import pytest
import torch
from benchmarks.timm_coverage import calibrate_norms, classifier_widths

import regprune as rp
from tests.exactness import check_exact

timm = pytest.importorskip("timm")

FAMILIES = [
    "resnet18",
    "efficientnet_b0",
    "convnext_atto",
    "mobilenetv3_small_050",
    "regnetx_002",
]


@pytest.mark.parametrize("name", FAMILIES)
def test_timm_model_prunes_shrinks_keeps_its_classifier_and_is_exact(name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.rand(1, 3, 64, 64)
    calibrate_norms(model, x)  # so that the outputs depend on the input: see its docstring
    result = rp.prune_with_result(model, x, ratio=0.5)

    assert result.macs_after < 0.9 * result.macs_before
    assert rp.count(result.model, x).macs == pytest.approx(result.macs_after, rel=0.01)
    widths_before, widths_after = classifier_widths(model), classifier_widths(result.model)
    assert widths_after is not None and widths_before is not None
    assert widths_after[1] == widths_before[1] == 10
    with torch.no_grad():
        assert result.model(x).shape == (1, 10)

    check_exact(model, x, ratio=0.5)


@pytest.mark.parametrize("name", ["pit_ti_224", "hiera_tiny_224"])
def test_timm_models_with_their_own_attention_spelling_prune_exactly(name: str) -> None:
    """PiT gives a module a view of its cls token made under no_grad (the MACs counter must
    not hook it); Hiera's attention reshapes with ``self.heads`` and ``self.dim_out``, sizes
    surgery refreshes. Both at the 224 px their position tables fix."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.rand(1, 3, 224, 224)
    result = rp.prune_with_result(model, x, ratio=0.5)
    assert result.macs_after < 0.6 * result.macs_before
    assert rp.count(result.model, x).macs == result.macs_after
    check_exact(model, x, ratio=0.5)


class StandardizedNet(torch.nn.Module):
    """NFNet-style: weight-standardized convs (timm's ScaledStdConv2d) around a plain one."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers import ScaledStdConv2d

        self.stem = ScaledStdConv2d(3, 8, 3)
        self.mid = torch.nn.Conv2d(8, 12, 3)
        self.out = ScaledStdConv2d(12, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.mid(torch.relu(self.stem(x)))))


def test_weight_standardized_convs_prune_their_outputs_exactly_and_inputs_inexactly() -> None:
    """Their forward calls F.conv2d on a standardized weight, which kept NFNets whole."""
    torch.manual_seed(0)
    model, x = StandardizedNet().eval(), torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        model.stem.gain.uniform_(0.5, 2.0)
    graph = rp.trace_graph(model, x)
    assert [u.layer for u in graph.unprunable] == ["out"]
    exact = {tuple(g.producers): g.exact for g in graph.groups}
    # stem's channels feed the plain conv (exact); mid's feed a standardized one (inexact)
    assert exact == {("stem",): True, ("mid",): False}
    pruned, _ = check_exact(model, x, 0.5)
    assert pruned.stem.out_channels == pruned.stem.gain.shape[0] == pruned.mid.in_channels == 4
    assert pruned.stem.scale == model.stem.scale  # gamma / sqrt(fan_in) as built
    small = rp.prune(model, x, ratio=0.5)
    assert small.out.in_channels == 6 and small(x).shape == (2, 6, 8, 8)
