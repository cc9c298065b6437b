"""The allocation's MACs model follows the attention matmuls of SDPA and ``matmul`` attention.

``q k^T`` and ``attn v`` cost ``tokens^2 x heads x head_dim``; once heads are removable, a
budget must credit their removal with these matmuls, or ``target_macs`` lands off. The MACs
model predicts a plan's MACs without surgery; here it must equal what :func:`regprune.count`
measures on the pruned model, for every kind of attention the tracer follows.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import regprune as rp
from regprune.allocation.macs_model import MacsModel
from regprune.api import make_plan
from regprune.graph.dependency import DependencyGraph
from tests.graph.test_attention_heads import Net, tokens
from tests.hf_models import tiny_hf_model

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")


def _timm_vit() -> tuple[torch.nn.Module, tuple]:
    torch.manual_seed(0)
    model = timm.models.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=5
    ).eval()
    return model, (torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)


def _model(name: str) -> tuple[torch.nn.Module, object]:
    if name == "timm_vit":
        return _timm_vit()
    if name in ("bert", "llama", "t5"):
        return tiny_hf_model(name, use_cache=False)
    path = {"sdpa": {}, "explicit": {"path": "explicit"}, "gqa": {"kv_heads": 2}}[name]
    return Net(**path).eval(), (tokens(),)


def _prune(model, inputs, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # BERT's config derives its head size
        return rp.prune_with_result(model, inputs, **kwargs)


def _attention_macs(graph: DependencyGraph) -> float:
    return sum(p.macs_unit * p.a_atoms.numel() for p in graph.products)


MODELS = ["bert", "llama", "timm_vit", "t5", "sdpa", "explicit", "gqa"]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("budget", [{"ratio": 0.5}, {"target_macs": 0.5}])
def test_predicted_macs_equal_the_pruned_models_count(name, budget) -> None:
    model, inputs = _model(name)
    result = _prune(model, inputs, **budget)
    assert result.macs_before == rp.count(model, inputs).macs
    assert result.macs_after == rp.count(result.model, inputs).macs
    # the attention matmuls are modelled, not constant: they are what heads remove beyond
    # their projections
    assert _attention_macs(result.graph) > 0


@pytest.mark.parametrize("name", ["bert", "llama", "timm_vit"])
def test_target_macs_lands_within_one_percent_below(name) -> None:
    model, inputs = _model(name)
    result = _prune(model, inputs, target_macs=0.5)
    counted = rp.count(result.model, inputs).macs
    assert 0.49 * result.macs_before <= counted <= 0.5 * result.macs_before


def test_head_dim_positions_are_credited_with_their_share_of_the_matmuls() -> None:
    model, inputs = Net(scale=0.5).eval(), (tokens(),)
    result = rp.prune_with_result(model, inputs, ratio=0.5, attention="head_dim")
    assert result.macs_after == rp.count(result.model, inputs).macs


def test_expected_macs_agree_with_macs_at_kept_or_removed_components() -> None:
    """The L0 gates' differentiable constraint: at probabilities 0 / 1 it is :meth:`macs`."""
    model, inputs = _model("llama")
    graph, _ = make_plan(model, inputs, ratio=0.5)
    macs_model = MacsModel(graph, rp.count(model, inputs).macs)
    keep = torch.rand(graph.group_of_component.numel(), generator=torch.Generator().manual_seed(0))
    keep = keep > 0.5
    expected = macs_model.expected(keep.double())
    assert float(expected) == pytest.approx(macs_model.macs(keep), rel=1e-9)
