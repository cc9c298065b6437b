"""Fuzz the public API's arguments: a clear ValueError / TypeError naming the argument, or a
valid result. One argument is corrupted per example, the others are valid, so the error must
name that one."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import regprune as rp
from regprune.inputs import CallArgs
from tests.reliability.test_bad_input import small_cnn

X = torch.randn(1, 3, 8, 8)
VALID = {"ratio": 0.5}

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 100),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.integers(0, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(torch.zeros(2)),
)

tensors = st.builds(
    lambda shape, dtype: torch.zeros(shape, dtype=dtype),
    st.lists(st.integers(0, 9), min_size=0, max_size=5).map(tuple),
    st.sampled_from([torch.float32, torch.int64, torch.bool]),
)

nested = st.recursive(
    st.one_of(tensors, st.none(), st.integers(0, 3), st.text(max_size=2), st.just({1, 2})),
    lambda inner: st.one_of(
        st.lists(inner, max_size=2),
        st.tuples(inner),
        st.dictionaries(st.sampled_from(["image", "boxes"]), inner, max_size=2),
    ),
    max_leaves=4,
)
"""Arguments of any structure (a detector's image list, a dict of maps) with strangers inside."""

CORRUPTIONS = {
    "ratio": junk,
    "target_macs": junk,
    "importance": st.one_of(junk, st.sampled_from(["l1", "fpgm", "random", "L1", "magnitude"])),
    "scope": st.one_of(junk, st.sampled_from(["local", "global", "Global"])),
    "ignore": st.one_of(
        junk, st.lists(st.sampled_from(["0", "3", "8", "nope", "", "0.weight"]), max_size=3)
    ),
    "round_to": junk,
    "max_ratio": junk,
    "seed": junk,
    "compensate": st.one_of(junk, st.sampled_from(["constant", "mean", "none", "zero"])),
    "example_inputs": st.one_of(
        junk,
        tensors,
        st.lists(tensors, max_size=2),
        st.tuples(tensors, tensors),
        st.tuples(nested),
        st.builds(
            lambda args, kwargs: CallArgs(*args, **kwargs),
            st.lists(nested, max_size=2),
            st.dictionaries(st.sampled_from(["mask", "scale"]), nested, max_size=2),
        ),
    ),
}

ARGUMENT_WORDS = {"ignore": ("ignore",), "target_macs": ("target_macs", "ratio")}


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data(), name=st.sampled_from(sorted(CORRUPTIONS)))
def test_bad_arguments_get_a_clear_error_or_a_valid_result(data, name: str) -> None:
    value = data.draw(CORRUPTIONS[name], label=name)
    model = small_cnn()
    kwargs = dict(VALID)
    example = X
    if name == "example_inputs":
        example = value
    elif name == "target_macs":
        kwargs = {"target_macs": value}
    else:
        kwargs[name] = value
    try:
        result = rp.prune(model, example, **kwargs)
    except (ValueError, TypeError) as error:
        words = ARGUMENT_WORDS.get(name, (name,))
        assert any(w in str(error) for w in words), f"{name}={value!r}: {error}"
        return
    assert isinstance(result, nn.Module)
    with torch.no_grad():
        out = result.eval()(X)
    assert out.shape == (1, 4) and not math.isnan(float(out.sum()))
