"""The meta-device shortcuts give what the real meta kernels give: shape, dtype, identity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from regprune.graph.meta_shortcuts import shape_only_result

X_SHAPE = (2, 4, 5, 5)
CALLS = [
    (F.batch_norm, lambda x: (x, torch.zeros(4, device="meta"), torch.ones(4, device="meta")), {}),
    (F.layer_norm, lambda x: (x, (5,)), {}),
    (F.group_norm, lambda x: (x, 2), {}),
    (F.instance_norm, lambda x: (x,), {}),
    (F.relu, lambda x: (x,), {}),
    (F.relu6, lambda x: (x,), {}),
    (F.hardtanh, lambda x: (x, 0.0, 6.0), {}),
    (F.hardswish, lambda x: (x,), {}),
    (F.silu, lambda x: (x,), {}),
    (F.leaky_relu, lambda x: (x, 0.1), {}),
    (F.dropout, lambda x: (x, 0.5, False), {}),
]


@pytest.mark.parametrize(
    ("func", "make_args", "kwargs"), CALLS, ids=lambda v: getattr(v, "__name__", "")
)
def test_shortcut_matches_the_meta_kernel(func, make_args, kwargs) -> None:
    x = torch.empty(X_SHAPE, device="meta", dtype=torch.float64)
    args = make_args(x)
    shortcut = shape_only_result(func, args, kwargs)
    real = func(*args, **kwargs)
    assert shortcut is not None
    assert shortcut.is_meta
    assert shortcut.shape == real.shape
    assert shortcut.dtype == real.dtype
    assert shortcut is not x  # out of place: a new tensor, like the kernel's


@pytest.mark.parametrize(
    ("func", "args", "kwargs"),
    [
        (F.relu, (), {"inplace": True}),
        (F.hardtanh, (0.0, 6.0, True), {}),
        (F.silu, (), {"inplace": True}),
        (F.dropout, (0.5, False, True), {}),
    ],
    ids=["relu", "hardtanh", "silu", "dropout"],
)
def test_inplace_variants_return_their_input(func, args, kwargs) -> None:
    x = torch.empty(X_SHAPE, device="meta")
    assert shape_only_result(func, (x, *args), kwargs) is x
    assert func(x, *args, **kwargs) is x  # what the real in-place op returns


def test_real_tensors_unknown_ops_and_bad_arguments_fall_through() -> None:
    real = torch.randn(X_SHAPE)
    meta = torch.empty(X_SHAPE, device="meta")
    assert shape_only_result(F.relu, (real,), {}) is None
    assert shape_only_result(F.conv2d, (meta, meta), {}) is None
    assert shape_only_result(F.relu, (meta,), {"not_an_argument": 1}) is None
