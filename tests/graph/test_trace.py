"""Tracing finds the right channel groups and locks what it cannot follow, saying why."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from regprune.graph import TraceError, trace_graph
from regprune.models import create_model
from tests.exactness import check_exact
from tests.zoo import ConcatNet, GroupedNet, TokenNet


def producers_of(graph) -> list[list[str]]:
    return [sorted(g.producers) for g in graph.groups]


def test_residual_adds_couple_every_branch() -> None:
    graph = trace_graph(torchvision.models.resnet18(), torch.randn(1, 3, 32, 32))
    stream = ["layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"]
    assert sorted(stream) in producers_of(graph)
    assert ["layer2.0.conv1"] in producers_of(graph)
    assert [u.layer for u in graph.unprunable] == ["fc"]


def test_concat_gives_each_producer_its_own_offsets() -> None:
    graph = trace_graph(ConcatNet(), torch.randn(1, 3, 8, 8))
    by_producer = {tuple(g.producers): g for g in graph.groups}
    a, b = by_producer[("a",)], by_producer[("b",)]
    bn_a = next(s for s in a.slices if s.module == "bn" and s.param == "weight")
    bn_b = next(s for s in b.slices if s.module == "bn" and s.param == "weight")
    assert bn_a.channel_of.tolist() == list(range(8)) + [-1] * 6
    assert bn_b.channel_of.tolist() == [-1] * 8 + list(range(6))


def test_chunk_into_equal_halves_couples_them_position_by_position() -> None:
    """``chunk(2)`` cuts where the dim's size says when the forward runs: halves that lose the
    same positions stay equal, so channel j of each half is one unit (C2f in YOLOv8)."""
    graph = trace_graph(ConcatNet(), torch.randn(1, 3, 8, 8))
    (chunked,) = [g for g in graph.groups if g.producers == ["c"]]
    assert chunked.size == 5
    out = next(s for s in chunked.slices if s.module == "c" and s.role == "out")
    assert out.channel_of.tolist() == list(range(5)) * 2
    assert ("d",) in {tuple(g.producers) for g in graph.groups}
    pruned, _ = check_exact(ConcatNet().eval(), torch.randn(2, 3, 8, 8), 0.5)
    assert pruned.c.out_channels < 10 and pruned.c.out_channels % 2 == 0


def test_chunk_into_unequal_parts_or_split_at_literal_sizes_locks() -> None:
    class Cut(nn.Module):
        def __init__(self, spelling: str) -> None:
            super().__init__()
            self.spelling = spelling
            self.c, self.d = nn.Conv2d(3, 9, 1), nn.Conv2d(9, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.c(x)
            parts = z.chunk(2, 1) if self.spelling == "chunk" else z.split((4, 5), 1)
            return self.d(torch.cat([parts[1], parts[0]], 1)).mean((2, 3))

    for spelling in ("chunk", "split"):  # 9 channels chunk into 5 + 4
        graph = trace_graph(Cut(spelling), torch.randn(1, 3, 4, 4))
        locked = {u.layer: u.reason for u in graph.unprunable}
        assert spelling in locked["c"]


class RepeatInterleave(nn.Module):
    """Channels repeated along the tokens (MViT's temporal position embedding), along the
    channels themselves, or by per-channel counts."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.c = nn.Conv2d(3, 6, 1)
        self.d = nn.Conv2d(12 if how == "channels" else 6, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.c(x)
        if self.how == "tokens":
            z = torch.repeat_interleave(z, 2, dim=2)
        elif self.how == "channels":
            z = z.repeat_interleave(2, dim=1)
        else:
            z = z.repeat_interleave(torch.ones(6, dtype=torch.long), dim=1)
        return self.d(z).mean((2, 3))


@pytest.mark.parametrize("how", ["tokens", "channels"])
def test_repeat_interleave_follows_the_channels_it_repeats(how: str) -> None:
    model, x = RepeatInterleave(how).eval(), torch.randn(2, 3, 4, 4)
    graph = trace_graph(model, x)
    assert [g.size for g in graph.groups] == [6]
    assert [u.layer for u in graph.unprunable] == ["d"]  # the model output only
    check_exact(model, x, 0.5)


def test_repeat_interleave_by_per_channel_counts_locks_and_says_why() -> None:
    graph = trace_graph(RepeatInterleave("counts"), torch.randn(2, 3, 4, 4))
    locked = {u.layer: u.reason for u in graph.unprunable}
    assert "repeat_interleave" in locked["c"] and "per-element repeats" in locked["c"]


def test_flatten_maps_one_channel_to_many_features() -> None:
    model = create_model("vgg11", num_classes=10, in_channels=1)
    graph = trace_graph(model, torch.randn(1, 1, 28, 28))
    last = graph.groups[-1]
    consumer = next(s for s in last.slices if s.role == "in")
    counts = torch.bincount(consumer.channel_of[consumer.channel_of >= 0])
    assert counts.numel() == last.size
    assert bool((counts == counts[0]).all())


@pytest.mark.parametrize("grouped_conv", ["channels", "groups"])
def test_grouped_convs_under_groupnorm_blocks_are_pruned_by_whole_groups(grouped_conv) -> None:
    """GroupNorm(4) over the 4-group conv's input blocks: the same channels inside every
    group would couple every channel with every other (the default finds that and traces the
    conv again by whole groups); whole groups leave 4 units."""
    graph = trace_graph(GroupedNet(), torch.randn(1, 3, 8, 8), grouped_conv=grouped_conv)
    (group,) = graph.groups
    # GroupNorm(4 groups) couples stem channels 4 by 4, the depthwise conv follows them one by
    # one, and the 4-group conv ties its 4 input channels to its 6 outputs: 4 removable units
    assert sorted(group.producers) == ["dw", "grouped", "stem"]
    assert group.size == 4
    out = next(s for s in group.slices if s.module == "grouped" and s.role == "out")
    assert out.channel_of.tolist() == [c for c in range(4) for _ in range(6)]


def test_attention_heads_are_a_group_and_unsupported_attention_is_kept_whole() -> None:
    model, tokens = TokenNet(), torch.randint(0, 50, (1, 5))
    graph = trace_graph(model, tokens)
    assert ["mlp.0"] in producers_of(graph)
    assert ["attn"] in producers_of(graph)  # its 4 heads (tests/graph/test_mha_heads.py)
    model.attn = nn.MultiheadAttention(16, 4, batch_first=True, add_bias_kv=True)
    graph = trace_graph(model, tokens)
    assert ["mlp.0"] in producers_of(graph)
    assert ["attn"] not in producers_of(graph)
    reasons = " ".join(u.reason for u in graph.unprunable)
    assert "add_bias_kv" in reasons


class FixedView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)).view(x.shape[0], 8))


def test_fixed_size_view_locks_with_a_fix_in_the_message() -> None:
    graph = trace_graph(FixedView(), torch.randn(1, 3, 8, 8))
    assert not graph.groups
    assert "use -1 or flatten()" in graph.unprunable[0].reason


class UnknownOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cummax(self.a(x), dim=1).values + self.b(x))


def test_unknown_ops_lock_their_inputs_and_name_the_op() -> None:
    graph = trace_graph(UnknownOp(), torch.randn(1, 3, 4, 4))
    locked = {u.layer: u.reason for u in graph.unprunable}
    assert "cummax" in locked["a"]
    assert "b" in locked  # coupled through the add with the unknown op's output


def test_ignore_keeps_outputs_but_not_inputs() -> None:
    model = create_model("resnet20", num_classes=10, in_channels=3)
    graph = trace_graph(model, torch.randn(1, 3, 32, 32), ignore=[model.layer1[0].conv1])
    assert "layer1.0.conv1" in {u.layer for u in graph.unprunable}
    assert all("layer1.0.conv1" not in g.producers for g in graph.groups)


def test_ignore_entry_not_in_model_is_rejected_with_similar_names() -> None:
    model = create_model("resnet20", num_classes=10)
    with pytest.raises(ValueError, match="names no submodule"):
        trace_graph(model, torch.randn(1, 3, 32, 32), ignore=["layer1.0.conv9"])
    with pytest.raises(ValueError, match="not a submodule"):
        trace_graph(model, torch.randn(1, 3, 32, 32), ignore=[nn.Conv2d(1, 1, 1)])


def test_forward_failure_names_the_module() -> None:
    model = create_model("resnet20", num_classes=10, in_channels=3)
    with pytest.raises(TraceError, match="conv1"):
        trace_graph(model, torch.randn(1, 1, 32, 32))


def test_trace_restores_mode_and_leaves_parameters_alone() -> None:
    model = create_model("resnet20", num_classes=10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trace_graph(model, torch.randn(1, 3, 32, 32))
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_layer_norm_groups_are_marked_inexact() -> None:
    graph = trace_graph(torchvision.models.convnext_tiny(), torch.randn(1, 3, 32, 32))
    exactness = {g.exact for g in graph.groups}
    assert exactness == {True, False}  # stream through LayerNorm: inexact; MLP hidden: exact


def test_functional_norm_parameters_join_their_channel() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 1)
            self.scale = nn.Parameter(torch.ones(6))
            self.head = nn.Conv2d(6, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.layer_norm(self.conv(x).permute(0, 2, 3, 1), (6,), self.scale)
            return self.head(y.permute(0, 3, 1, 2))

    graph = trace_graph(Functional(), torch.randn(1, 3, 4, 4))
    (group,) = graph.groups
    assert any(s.param == "scale" and s.role == "free" for s in group.slices)
    assert not group.exact


def test_type_as_and_to_a_tensor_lend_a_dtype_not_channels() -> None:
    """``y.type_as(z)`` / ``z.to(y)`` read only z's dtype: the two convs stay apart (they were
    coupled as if added, so one could not lose channels without the other)."""

    class DtypeFromAnother(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(3, 8, 3, padding=1)
            self.c = nn.Conv2d(8, 4, 1)
            self.d = nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y, z = self.a(x), self.b(x)
            return self.c(y.type_as(z)) + self.d(z.to(y))

    graph = trace_graph(DtypeFromAnother(), torch.randn(1, 3, 8, 8))
    producers = [sorted({s.module for s in g.slices if s.role == "out"}) for g in graph.groups]
    assert sorted(producers) == [["a"], ["b"]]


class ShapedLikeAParameter(nn.Module):
    """``reshape_as`` / ``expand_as`` whose other tensor is a parameter: traced on the meta
    device, where it has no data (timm's ScaledStdConv2d ends in ``.reshape_as(self.weight)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.shift = nn.Parameter(torch.randn(8))
        self.like = nn.Parameter(torch.zeros(1, 8, 1, 1))  # only its shape is read
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x) + self.shift.reshape_as(self.like))
        h = torch.relu(self.conv2(h))
        return self.conv3(h * torch.sigmoid(h.mean((2, 3), keepdim=True)).expand_as(h))


def test_reshape_as_a_parameter_slices_that_parameter_with_the_channels() -> None:
    model = ShapedLikeAParameter().eval()
    x = torch.randn(2, 3, 8, 8)
    graph = trace_graph(model, x)
    assert not any("not known to the tracer" in u.reason for u in graph.unprunable)
    pruned, _ = check_exact(model, x, 0.5)  # conv2's channels go through expand_as too
    assert pruned.conv1.out_channels == 4 and pruned.conv2.out_channels == 3
    assert pruned.like.shape == (1, 4, 1, 1) and pruned.shift.shape == (4,)


class ShapedLikeAConstant(nn.Module):
    """``reshape_as`` of a tensor made in the forward with a literal size: the channels stay."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.shift = nn.Parameter(torch.randn(8))
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        like = torch.zeros(1, 8, 1, 1, device=x.device)
        return self.conv2(torch.relu(self.conv1(x) + self.shift.reshape_as(like)))


def test_reshape_as_a_shape_that_stays_keeps_the_channels_it_fixes() -> None:
    model = ShapedLikeAConstant().eval()
    graph = trace_graph(model, torch.randn(2, 3, 8, 8))
    reasons = {u.layer: u.reason for u in graph.unprunable}
    assert "fixes the channel dim to the other tensor's 8" in reasons["conv1"]
