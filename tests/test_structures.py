"""Outputs compared structure by structure: every container, key and leaf, with the place of the
first difference named."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch

from regprune.structures import flatten_with_paths, structure_mismatch, value_mismatch


def detections(rows: int, width: int = 4) -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.ones(rows, width), "scores": torch.ones(rows)},
        {"boxes": torch.ones(2, width), "scores": torch.ones(2)},
    ]


def test_paths_name_each_leaf() -> None:
    paths = [path for path, _ in flatten_with_paths(detections(3))]
    assert paths == ["[0]['boxes']", "[0]['scores']", "[1]['boxes']", "[1]['scores']"]


@pytest.mark.parametrize(
    ("got", "want", "message"),
    [
        (detections(3), detections(3), None),
        (detections(3)[:1], detections(3), "at the output: a list of 1 item, expected 2"),
        (
            [{"boxes": torch.ones(3, 4)}, detections(3)[1]],
            detections(3),
            r"at [0]: keys ['boxes'], expected ['boxes', 'scores']",
        ),
        (detections(3), detections(5), "at [0]['boxes']: shape (3, 4), expected (5, 4)"),
        (
            {"out": torch.ones(1, 21, 8, 8)},
            {"out": torch.ones(1, 21, 8, 8, dtype=torch.float64)},
            "at ['out']: dtype torch.float32, expected torch.float64",
        ),
        (
            (torch.ones(2),),
            [torch.ones(2)],
            "at the output: a tuple of 1 item, expected a list of 1 item",
        ),
        ([torch.ones(2), 3], [torch.ones(2), torch.ones(1)], "at [1]: an int, expected a tensor"),
        (torch.ones(2), [torch.ones(2)], "at the output: a leaf, expected a list of 1 item"),
    ],
    ids=["same", "missing-image", "missing-key", "rows", "dtype", "container", "leaf", "depth"],
)
def test_the_first_difference_is_named_with_its_place(got, want, message) -> None:
    assert structure_mismatch(got, want) == message


def test_rows_may_vary_for_detections_but_no_other_dim() -> None:
    assert structure_mismatch(detections(3), detections(5), rows_may_vary=True) is None
    assert structure_mismatch(detections(3, width=5), detections(3), rows_may_vary=True) == (
        "at [0]['boxes']: shape (3, 5), expected (3, 4)"
    )
    assert "shape (3, 4, 1)" in structure_mismatch(
        [{"boxes": torch.ones(3, 4, 1), "scores": torch.ones(3)}, detections(3)[1]],
        detections(3),
        rows_may_vary=True,
    )


def test_namedtuples_and_non_tensor_leaves_are_compared_by_type() -> None:
    Out = namedtuple("Out", "logits count")
    assert structure_mismatch(Out(torch.ones(2), 5), Out(torch.ones(2), 7)) is None
    assert structure_mismatch([Out(torch.ones(2), 5)], [(torch.ones(2), 5)]) == (
        "at [0]: an Out of 2 items, expected a tuple of 2 items"
    )
    assert structure_mismatch([Out([torch.ones(2)], 5)], [Out([], 5)]) == (
        "at [0].logits: a list of 1 item, expected 0"
    )
    assert structure_mismatch(Out(torch.ones(2), 5.0), Out(torch.ones(2), 7)) == (
        "at .count: a float, expected an int"
    )


def test_values_are_compared_leaf_by_leaf_within_tolerance() -> None:
    want = {"flow": [torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 8, 8)], "n": 2}
    close = {"flow": [torch.zeros(1, 2, 4, 4), torch.full((1, 2, 8, 8), 1e-7)], "n": 2}
    far = {"flow": [torch.zeros(1, 2, 4, 4), torch.full((1, 2, 8, 8), 0.5)], "n": 2}
    assert value_mismatch(close, want) is None
    assert value_mismatch(far, want) == (
        "at ['flow'][1]: max abs difference 0.5 (atol 1e-05, rtol 0.0001)"
    )
    assert value_mismatch({**close, "n": 3}, want) == "at ['n']: 3, expected 2"
    nan = torch.tensor([float("nan"), 1.0])
    assert value_mismatch([nan], [nan.clone()]) is None
    assert value_mismatch([torch.tensor([1, 2, 3])], [torch.tensor([1, 0, 3])]) == (
        "at [0]: 1 of 3 values differ"
    )
