"""Example inputs as models take them: a tensor, a tuple of positional arguments of any nesting
(a detector's list of images), keyword arguments through CallArgs; and clear refusals, before
any forward, for what no model takes."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest
import torch
from torch import nn

import regprune as rp
from regprune.inputs import (
    CallArgs,
    as_call_args,
    as_input_tuple,
    call_model,
    iter_tensors,
    map_tensors,
)

X = torch.randn(1, 3, 8, 8)


class TinyDetector(nn.Module):
    """torchvision's detector interface: a list of images of any size (and optional targets)
    in, one dict of detections per image out, as many boxes as score above the threshold."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.score = nn.Conv2d(16, 1, 1)
        self.box = nn.Conv2d(16, 4, 1)

    def forward(
        self, images: list[torch.Tensor], targets: list[dict] | None = None
    ) -> list[dict[str, torch.Tensor]]:
        detections = []
        for image in images:
            features = self.backbone(image[None])
            scores = self.score(features).sigmoid().flatten()
            boxes = self.box(features).flatten(2)[0].t()
            keep = scores > 0.5
            detections.append({"boxes": boxes[keep], "scores": scores[keep]})
        return detections


class TwoInputs(nn.Module):
    """A tensor, and a dict of tensors, as positional and keyword arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor, extra: dict[str, torch.Tensor], scale: float = 1.0):
        return self.head(torch.relu(self.conv(x) + extra["bias"])) * scale


# ---- what is accepted ---------------------------------------------------------------------


Pair = namedtuple("Pair", "image mask")


@pytest.mark.parametrize(
    "example",
    [
        X,
        (X,),
        (X, X),
        ([X, X],),
        ({"image": X, "boxes": torch.zeros(0, 4)},),
        ((X, [X, {"a": X}]), None, 2, 0.5, True),
        (Pair(X, X),),
    ],
    ids=["tensor", "tuple", "two", "list-arg", "dict-arg", "nested-and-constants", "namedtuple"],
)
def test_positional_arguments_of_any_nesting_are_passed_as_they_are(example) -> None:
    args = as_input_tuple(example)
    expected = (example,) if isinstance(example, torch.Tensor) else example
    assert all(a is b for a, b in zip(args, expected, strict=True))
    assert [id(t) for t in iter_tensors(args)] == [id(t) for t in iter_tensors(expected)]


def test_keyword_arguments_reach_the_model_through_call_args() -> None:
    model = TwoInputs().eval()
    bias = torch.randn(1, 1, 8, 8)
    example = CallArgs(X, extra={"bias": bias}, scale=2.0)
    with torch.no_grad():
        assert torch.equal(call_model(model, example), model(X, {"bias": bias}, scale=2.0))
    with pytest.raises(TypeError, match=r"keyword arguments \['extra', 'scale'\]"):
        as_input_tuple(example)  # model(*inputs) would drop them silently


def test_map_tensors_keeps_the_structure_and_the_constants() -> None:
    example = CallArgs([X, {"m": X}], None, k=3, t=X)
    moved = map_tensors(lambda t: t.to("meta"), example)
    assert isinstance(moved, CallArgs) and moved.kwargs["k"] == 3 and moved.args[1] is None
    assert all(t.is_meta for t in iter_tensors(moved)) and len(list(iter_tensors(moved))) == 3


# ---- what is refused, and what the message says ---------------------------------------------


@pytest.mark.parametrize("example", [[X], [X, X]], ids=["one", "two"])
def test_a_bare_list_is_refused_naming_both_readings(example) -> None:
    with pytest.raises(TypeError) as info:
        as_call_args(example)
    message = str(info.value)
    assert message.startswith("example_inputs must be a tensor or a non-empty tuple")
    assert "(x, y) if its items are the model's arguments" in message
    assert "([img, ...],) if the model takes the list itself" in message


def test_a_bare_dict_is_refused_naming_call_args_and_the_tuple() -> None:
    with pytest.raises(TypeError, match=r"got a dict; pass \(\{\.\.\.\},\) .* CallArgs\(\*\*"):
        as_call_args({"x": X})


@pytest.mark.parametrize(
    ("example", "where"),
    [
        ({X, X}, r"got a set \(a set has no order"),
        ("x", r"got a str \('x': models take tensors"),
        (X.numpy(), r"got a ndarray \(convert it with torch.from_numpy\)"),
        ((X, "x"), r"got example_inputs\[1\] = a str"),
        (([X, {X}],), r"got example_inputs\[0\]\[1\] = a set \(a set has no order"),
        (({"a": [X, np.zeros(2)]},), r"example_inputs\[0\]\['a'\]\[1\] = a ndarray"),
        (CallArgs(X, mask="m"), r"got example_inputs keyword 'mask' = a str"),
        ((1, None), "got arguments that hold no tensor"),
        ((), "got an empty tuple"),
        (None, "got a NoneType"),
    ],
    ids=[
        "set",
        "string",
        "ndarray",
        "string-arg",
        "nested-set",
        "nested-ndarray",
        "string-kwarg",
        "no-tensor",
        "empty",
        "none",
    ],
)
def test_unsupported_structures_name_where_and_the_fix(example, where: str) -> None:
    model = TwoInputs()
    with pytest.raises(TypeError, match=where):
        rp.trace_graph(model, example)
    assert not model._forward_hooks and not model.conv._forward_pre_hooks


@pytest.mark.parametrize(
    ("example", "message"),
    [
        (X[:0], r"example_inputs\[0\] is an empty batch \(shape \(0, 3, 8, 8\)\)"),
        (([],), r"example_inputs\[0\] is an empty list, an empty batch; .*\(\[img\],\)"),
        (CallArgs(X, mask=X[:0]), r"example_inputs keyword 'mask' is an empty batch"),
    ],
    ids=["tensor", "image-list", "keyword"],
)
def test_an_empty_batch_is_named_before_any_forward(example, message: str) -> None:
    class NeverRun(nn.Module):
        def forward(self, *args, **kwargs):
            raise AssertionError("the model ran")

    with pytest.raises(ValueError, match=message):
        rp.trace_graph(NeverRun(), example)


def test_empty_tensors_inside_an_argument_are_data_not_an_empty_batch() -> None:
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    assert as_input_tuple(([X[0]], [target]))[1] == [target]  # an image with no objects


# ---- models that take them --------------------------------------------------------------


def test_a_detector_taking_a_list_of_images_is_traced_and_planned() -> None:
    torch.manual_seed(0)
    model = TinyDetector().eval()
    image = torch.rand(3, 16, 16)
    graph, plan = rp.make_plan(model, ([image],), ratio=0.5)
    assert sorted(g.size for g in graph.groups) == [16, 16]
    assert plan.num_dropped() == 16
    _, with_targets = rp.make_plan(model, CallArgs([image], targets=None), ratio=0.5)
    assert with_targets.drop.keys() == plan.drop.keys()


def test_keyword_and_nested_arguments_are_traced_into() -> None:
    """The dict and keyword arguments reach the traced forward (a model refusing them would
    fail the trace); a spatial map added to a conv's output leaves its channels prunable."""
    model = TwoInputs()
    bias = torch.randn(1, 1, 8, 8)
    graph = rp.trace_graph(model, CallArgs(X, extra={"bias": bias}, scale=2.0))
    assert [g.size for g in graph.groups] == [8]
    assert rp.trace_graph(model, (X, {"bias": bias})).groups[0].size == 8


def test_a_detector_is_pruned_and_runs_on_images_of_other_sizes() -> None:
    torch.manual_seed(0)
    model = TinyDetector().eval()
    small = rp.prune(model, ([torch.rand(3, 16, 16)],), ratio=0.5)
    assert small.backbone[0].out_channels == 8
    with torch.no_grad():
        detections = small([torch.rand(3, 16, 16), torch.rand(3, 24, 20)])
    assert [sorted(d) for d in detections] == [["boxes", "scores"]] * 2
