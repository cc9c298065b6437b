"""One test per row of ``docs/errors.md``: what each bad input does, and that its message names
the problem and the fix."""

from __future__ import annotations

import importlib
import io
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import regprune
import regprune as rp
from regprune.allocation import BudgetError
from regprune.graph import TraceError
from regprune.methods import get as get_method
from regprune.surgery import PlanError
from tests.exactness import check_exact
from tests.zoo import ConcatNet, GroupedNet, randomize_norms

X = torch.randn(2, 3, 8, 8)
TRACE_FIX = "Check that example_inputs match what the model expects"


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return randomize_norms(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 4),
        )
    )


def outputs(model: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        result = model(*inputs)
    model.train(was_training)
    return result


def has_hooks(model: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


# ---- example inputs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("example", "problem"),
    [
        (torch.randn(2, 1, 8, 8), "expected input.*to have 3 channels, but got 1"),
        (torch.randn(3, 8, 8), "expected 4D input"),
        (torch.ones(2, 3, 8, 8, dtype=torch.long), "Input type .*long"),
        (torch.randn(2, 3, 8, 8, dtype=torch.float64), "Input type .*double"),
    ],
    ids=["channels", "ndim", "int-dtype", "float64"],
)
def test_inputs_the_model_cannot_run_name_the_module_and_the_fix(example, problem: str) -> None:
    model = small_cnn()
    with pytest.raises(TraceError, match=rf"failed inside module '.*{problem}.*{TRACE_FIX}"):
        rp.prune(model, example, ratio=0.5)
    assert not has_hooks(model)


@pytest.mark.parametrize(
    "example",
    [{"x": X}, None, X.numpy(), (), [1, 2], [X, "x"]],
    ids=["dict", "none", "ndarray", "empty-tuple", "ints", "mixed-list"],
)
def test_inputs_that_are_not_tensors_are_refused_saying_what_is_allowed(example) -> None:
    with pytest.raises(TypeError, match="example_inputs must be a tensor or a non-empty tuple"):
        rp.prune(small_cnn(), example, ratio=0.5)


def test_refused_inputs_leave_no_tracer_hooks_on_the_model() -> None:
    model = small_cnn()
    with pytest.raises(TypeError, match="example_inputs must be a tensor"):
        rp.trace_graph(model, {"x": X})
    assert not has_hooks(model)
    torch.save(model, io.BytesIO())  # fails today: Can't pickle 'Tracer.run.<locals>.<lambda>'


# ---- modes, frozen parameters --------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_either_mode_prunes_and_the_mode_is_restored(training: bool) -> None:
    model = small_cnn().train(training)
    small = rp.prune(model, X, ratio=0.5)
    assert model.training is training and small.training is training
    assert all(m.training is training for m in model.modules())
    assert small[0].out_channels == 4
    assert outputs(small, X).shape == outputs(model, X).shape


def test_mixed_submodule_modes_are_restored() -> None:
    model = small_cnn().train()
    model[1].eval()  # frozen BatchNorm inside a training model
    rp.prune(model, X, ratio=0.5)
    assert model.training and not model[1].training


def test_frozen_parameters_are_pruned_and_stay_frozen() -> None:
    model = small_cnn()
    for param in [*model[0].parameters(), model[1].weight]:
        param.requires_grad_(False)
    small = rp.prune(model, X, ratio=0.5)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"0.weight", "0.bias", "1.weight"}
    for name, param in small.named_parameters():
        assert isinstance(param, nn.Parameter) and param.is_leaf
        assert param.requires_grad is (name not in frozen), name
    assert small[0].weight.shape[0] == 4 and small[1].weight.shape == (4,)


# ---- shared and tied weights ---------------------------------------------------------------


class SharedConvNet(nn.Module):
    """The same conv module called twice in a row."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.shared(F.relu(self.stem(x))))
        return self.fc(F.relu(self.bn(self.shared(x))).mean((2, 3)))


class TiedLM(nn.Module):
    """An embedding tied to the output projection (weight sharing as in language models)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(20, 12)
        self.mlp = nn.Linear(12, 12)
        self.out = nn.Linear(12, 20, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        return self.out(h + F.relu(self.mlp(h)))


TOKENS = torch.randint(0, 20, (2, 5))


def test_a_module_called_twice_is_pruned_as_one_coupled_group() -> None:
    model = randomize_norms(SharedConvNet())
    graph = rp.trace_graph(model, X)
    assert [sorted(g.producers) for g in graph.groups] == [["shared", "stem"]]
    pruned, plan = check_exact(model, X, 0.5)
    assert plan.num_dropped() == 4 and pruned.shared.weight.shape == (4, 4, 3, 3)


def test_tied_embedding_and_output_prune_exactly() -> None:
    pruned, plan = check_exact(TiedLM(), TOKENS, 0.5)
    assert plan.num_dropped() == 6
    assert pruned.embed.weight.shape == pruned.out.weight.shape == (20, 6)


def test_tied_weights_stay_tied_after_pruning() -> None:
    small = rp.prune(TiedLM(), TOKENS, ratio=0.5)
    assert small.out.weight is small.embed.weight


def test_tied_model_round_trips_through_save_and_load(tmp_path: Path) -> None:
    small = rp.prune(TiedLM(), TOKENS, ratio=0.5)
    rp.save_pruned(small, tmp_path / "tied.pt")
    loaded = rp.load_pruned(TiedLM(), tmp_path / "tied.pt")
    assert torch.equal(outputs(loaded, TOKENS), outputs(small, TOKENS))


# ---- buffers, tensor attributes, custom modules -------------------------------------------


class BufferNet(nn.Module):
    """A per-channel scale kept as a buffer, an integer step counter, a plain tensor attribute."""

    def __init__(self, persistent: bool = True, plain_attribute: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.register_buffer("scale", torch.rand(1, 8, 1, 1) + 0.5, persistent=persistent)
        self.register_buffer("steps", torch.tensor(3))
        self.plain = torch.rand(1, 8, 1, 1) + 0.5 if plain_attribute else None
        self.conv2 = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x)) * self.scale
        if self.plain is not None:
            x = x * self.plain
        return self.fc(self.conv2(x).mean((2, 3)))


def test_buffers_used_per_channel_are_sliced_and_round_trip(tmp_path: Path) -> None:
    model = BufferNet()
    pruned, _ = check_exact(model, X, 0.5)
    assert pruned.scale.shape == (1, 4, 1, 1) and int(pruned.steps) == 3
    rp.save_pruned(pruned, tmp_path / "b.pt")
    loaded = rp.load_pruned(BufferNet(), tmp_path / "b.pt")
    assert torch.equal(outputs(loaded, X), outputs(pruned, X))


def test_plain_tensor_attributes_keep_their_channels_whole_and_are_listed() -> None:
    model = BufferNet(plain_attribute=True)
    graph = rp.trace_graph(model, X)
    kept = {u.layer: u.reason for u in graph.unprunable}
    assert "fixed-size constant" in kept["conv"]
    small = rp.prune(model, X, ratio=0.5)
    assert small.conv.out_channels == 8 and small.conv2.out_channels == 2
    assert outputs(small, X).shape == (2, 2)


def test_non_persistent_buffers_round_trip(tmp_path: Path) -> None:
    pruned = rp.prune(BufferNet(persistent=False), X, ratio=0.5)
    rp.save_pruned(pruned, tmp_path / "b.pt")
    loaded = rp.load_pruned(BufferNet(persistent=False), tmp_path / "b.pt")
    assert torch.equal(outputs(loaded, X), outputs(pruned, X))


class GainBlock(nn.Module):
    """A custom module with its own forward: conv, a learned per-channel gain, residual add."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.gain = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x) * self.gain.view(1, -1, 1, 1)) + x


class ScaledConv(nn.Conv2d):
    """A conv subclass whose forward calls F.conv2d itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * 2, self.bias, padding=1)


class CustomNet(nn.Module):
    def __init__(self, functional_conv: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = ScaledConv(8, 8, 3) if functional_conv else GainBlock(8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(F.relu(self.stem(x))).mean((2, 3)))


def test_custom_modules_made_of_known_functions_are_pruned_exactly() -> None:
    pruned, plan = check_exact(CustomNet(), X, 0.5)
    assert plan.num_dropped() == 4 and pruned.block.gain.shape == (4,)


def test_custom_functional_convs_are_kept_whole_and_the_model_still_runs() -> None:
    model = CustomNet(functional_conv=True)
    small = rp.prune(model, X, ratio=0.5)
    assert small.block.weight.shape == model.block.weight.shape
    assert torch.allclose(outputs(small, X), outputs(model, X))


def test_custom_functional_convs_are_listed_as_kept_whole() -> None:
    graph = rp.trace_graph(CustomNet(functional_conv=True), X)
    assert "block" in {u.layer for u in graph.unprunable}


# ---- ignore= -------------------------------------------------------------------------------


def test_ignore_names_that_are_close_get_suggestions() -> None:
    with pytest.raises(
        ValueError, match=r"ignore entry 'head.fc' names no submodule.*similar names: \['fc'\]"
    ):
        rp.prune(ConcatNet(), X, ratio=0.5, ignore=["head.fc"])


def test_ignore_modules_of_another_model_are_refused_with_the_fix() -> None:
    with pytest.raises(
        ValueError, match=r"not a submodule of the model.*pass modules of this model"
    ):
        rp.prune(small_cnn(), X, ratio=0.5, ignore=[nn.Linear(8, 4)])


def test_ignore_entries_of_other_types_are_refused() -> None:
    with pytest.raises(TypeError, match="ignore entries must be modules or names, got int"):
        rp.prune(small_cnn(), X, ratio=0.5, ignore=[3])


def test_ignored_layers_keep_their_width() -> None:
    model = ConcatNet()
    small = rp.prune(model, X, ratio=0.5, ignore=[model.a, "c"])
    assert small.a.out_channels == 8 and small.c.out_channels == 10
    assert small.b.out_channels < 6


def test_ignore_names_without_a_close_match_say_where_names_come_from() -> None:
    with pytest.raises(ValueError, match=r"names no submodule.*named_modules"):
        rp.prune(small_cnn(), X, ratio=0.5, ignore=["fc"])


def test_ignore_given_one_name_instead_of_a_list() -> None:
    """One name is one entry. ``ignore`` keeps a layer's output width; its inputs may shrink."""
    model = ConcatNet()
    small = rp.prune(model, X, ratio=0.5, ignore="fc")
    assert small.fc.out_features == model.fc.out_features
    assert small.fc.in_features < model.fc.in_features


# ---- targets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": 1.0}, r"ratio must be in \[0, 1\)"),
        ({"ratio": -0.1}, r"ratio must be in \[0, 1\)"),
        ({"ratio": float("nan")}, r"ratio must be in \[0, 1\)"),
        ({"target_macs": 0.0}, r"target_macs must be in \(0, 1\]"),
        ({"target_macs": 1.5}, r"target_macs must be in \(0, 1\]"),
        ({"target_macs": float("inf")}, r"target_macs must be in \(0, 1\]"),
        ({"ratio": 0.5, "target_macs": 0.5}, "give exactly one of ratio="),
        ({}, "give exactly one of ratio="),
        ({"ratio": 0.5, "scope": "layer"}, r"scope must be one of \('local', 'global'\)"),
        ({"ratio": 0.5, "round_to": 0}, "round_to must be a positive integer"),
        ({"ratio": 0.5, "importance": "taylor"}, "unknown importance 'taylor'; choose one of"),
    ],
    ids=[
        "ratio=1",
        "ratio<0",
        "ratio=nan",
        "target=0",
        "target>1",
        "target=inf",
        "both",
        "neither",
        "scope",
        "round_to",
        "importance",
    ],
)
def test_targets_out_of_range_say_what_is_allowed(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rp.prune(small_cnn(), X, **kwargs)


@pytest.mark.parametrize("kwargs", [{"ratio": "0.5"}, {"target_macs": "0.5"}], ids=str)
def test_targets_given_as_strings_are_refused_by_name(kwargs: dict) -> None:
    with pytest.raises((TypeError, ValueError), match=next(iter(kwargs))):
        rp.prune(small_cnn(), X, **kwargs)


def test_an_unreachable_target_is_a_budget_error_with_the_floor_and_the_fix() -> None:
    with pytest.raises(BudgetError, match=r"leaves 0\.\d+ of the MACs.*larger target_macs"):
        rp.prune(small_cnn(), X, target_macs=0.01)


def test_a_model_with_nothing_to_prune_cannot_meet_a_target() -> None:
    model = nn.Sequential(nn.Linear(12, 3))
    with pytest.raises(BudgetError, match=r"leaves 1\.000 of the MACs.*graph\.unprunable"):
        rp.prune(model, torch.randn(2, 12), target_macs=0.5)
    same = rp.prune(model, torch.randn(2, 12), ratio=0.5)
    assert same[0].weight.shape == (3, 12)


def test_a_plan_from_another_model_is_refused() -> None:
    _, plan = rp.make_plan(ConcatNet(), X, ratio=0.5)
    other = GroupedNet()
    with pytest.raises(PlanError, match="made for a ConcatNet, not a GroupedNet; make a plan"):
        rp.apply_plan(other, rp.trace_graph(other, X), plan)


# ---- load_pruned ---------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "small.pt"
    rp.save_pruned(rp.prune(small_cnn(), X, ratio=0.5), path)
    return path


class OtherNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(x)


def test_loading_into_another_class_names_both_and_the_fix(saved: Path) -> None:
    with pytest.raises(
        ValueError,
        match="holds a pruned Sequential, but the model given is a "
        "OtherNet; build the original architecture",
    ):
        rp.load_pruned(OtherNet(), saved)


def test_loading_into_a_bigger_model_of_the_same_class_names_the_extra_tensors(saved: Path) -> None:
    bigger = nn.Sequential(*small_cnn()[:-1], nn.Linear(8, 4), nn.Linear(4, 4))
    with pytest.raises(
        ValueError, match=r"tensors the saved one lacks \(9.bias, 9.weight\); build"
    ):
        rp.load_pruned(bigger, saved)


def test_loading_into_a_smaller_model_of_the_same_class_says_what_to_build(saved: Path) -> None:
    with pytest.raises(ValueError, match=r"does not exist in the given model.*build the"):
        rp.load_pruned(nn.Sequential(nn.Conv2d(3, 8, 3)), saved)


def test_a_plain_state_dict_is_not_taken_for_a_pruned_model(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(small_cnn().state_dict(), path)
    with pytest.raises(ValueError, match=r"not a regprune pruned model.*save it with regprune"):
        rp.load_pruned(small_cnn(), path)


def test_a_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.pt"):
        rp.load_pruned(small_cnn(), tmp_path / "absent.pt")


def _damage(saved: Path, how: str) -> Path:
    data = saved.read_bytes()
    if how == "truncated":
        saved.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        saved.write_bytes(b"")
    elif how == "garbage":
        saved.write_bytes(b"not a torch file")
    elif how == "pickled-module":
        torch.save(nn.Linear(2, 2), saved)
    elif how == "incomplete-payload":
        torch.save({"format": "regprune.pruned/1"}, saved)
    return saved


@pytest.mark.parametrize(
    "how", ["truncated", "empty", "garbage", "pickled-module", "incomplete-payload"]
)
def test_a_damaged_file_is_a_clear_error_naming_the_file(saved: Path, how: str) -> None:
    path = _damage(saved, how)
    with pytest.raises(ValueError, match=rf"{path}.*(corrupt|not a regprune pruned model)"):
        rp.load_pruned(small_cnn(), path)


# ---- methods -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": 0.5, "mask_rule": "bad"}, r"mask_rule must be one of \('aggregate', 'vote'\)"),
        ({"ratio": 0.5, "compensate": "zero"}, "compensate must be one of"),
        ({"ratio": 0.5, "norm": "l3"}, "norm must be one of"),
        ({"ratio": 0.5, "mask_from": "nope"}, "unknown importance 'nope'; choose one of"),
        ({"ratio": 1.5}, r"ratio must be in \[0, 1\)"),
        ({}, "give exactly one of ratio="),
    ],
    ids=["mask_rule", "compensate", "norm", "mask_from", "ratio", "no-target"],
)
def test_bad_method_arguments_say_what_is_allowed(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_method("masksparsity", small_cnn(), X, **kwargs)


def test_an_unknown_keyword_is_named() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 's_typo'"):
        get_method("masksparsity", small_cnn(), X, ratio=0.5, s_typo=1e-4)


def test_an_unknown_method_lists_the_available_ones() -> None:
    with pytest.raises(
        ValueError, match=r"unknown method 'masksparsty'; choose one of \[.*'masksparsity'"
    ):
        get_method("masksparsty", small_cnn(), X, ratio=0.5)


def test_methods_are_reachable_from_the_top_level_package(monkeypatch: pytest.MonkeyPatch) -> None:
    # Forget every import of regprune.methods (other tests made one), then run __init__ again.
    for name in [n for n in sys.modules if n.startswith("regprune.methods")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delattr(regprune, "methods")
    importlib.reload(regprune)
    assert "masksparsity" in regprune.methods.available()


# ---- the inputs issue 17 found with deep or no errors ----------------------------------------


def test_round_to_true_is_refused_at_the_door() -> None:
    with pytest.raises(ValueError, match=r"round_to must be a positive integer .* got True"):
        rp.prune(small_cnn(), X, ratio=0.5, round_to=True)


@pytest.mark.parametrize("entry", ["model", ""])
def test_ignoring_the_model_itself_is_refused(entry: str) -> None:
    model = small_cnn()
    with pytest.raises(ValueError, match="ignore names the model itself"):
        rp.prune(model, X, ratio=0.5, ignore=[model if entry == "model" else ""])


def test_a_tuple_of_tensors_works_and_a_list_is_refused_as_ambiguous() -> None:
    """``[x]`` could be the model's arguments or its one argument, a list (a detector's
    images): a wrong guess would fail deep in the model, so the message names both tuples."""
    model = small_cnn()
    assert rp.prune(model, (X,), ratio=0.5)(X).shape == model(X).shape
    with pytest.raises(TypeError, match=r"a list is ambiguous, so write a tuple: \(x, y\)"):
        rp.prune(model, [X], ratio=0.5)
    with pytest.raises(TypeError, match=r"got a dict; pass \(\{\.\.\.\},\) .* CallArgs"):
        rp.prune(model, {"x": X}, ratio=0.5)
    assert not has_hooks(model)


def test_an_empty_batch_is_named_not_blamed_on_a_layer() -> None:
    with pytest.raises(ValueError, match=r"example_inputs\[0\] is an empty batch \(shape \(0, 3"):
        rp.prune(small_cnn(), X[:0], ratio=0.5)


def test_a_meta_model_says_what_to_do() -> None:
    with torch.device("meta"):
        model = small_cnn_meta()
    x = torch.randn(1, 3, 8, 8, device="meta")
    with pytest.raises(ValueError, match=r"on the meta device .* importance='random'"):
        rp.prune(model, x, ratio=0.5)
    small = rp.prune(model, x, ratio=0.5, importance="random")
    assert small[0].out_channels == 4


def small_cnn_meta() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def test_messages_found_by_the_errors_table_review() -> None:
    model = small_cnn()
    with pytest.raises(TraceError, match="the model's forward failed on example_inputs") as info:
        rp.prune(model, (X, X), ratio=0.5)  # one input too many: nothing to ignore
    assert "takes 2 positional arguments but 3 were given" in str(info.value)
    assert "ignore=" not in str(info.value) and not has_hooks(model)
    with pytest.raises(TypeError, match=r"got list whose item \[1\] is a str"):
        rp.prune(model, [X, "x"], ratio=0.5)
    with torch.device("meta"):
        meta = small_cnn_meta()
    with pytest.raises(ValueError, match="importance 'bn_scale' reads the weights"):
        rp.prune(meta, torch.randn(1, 3, 8, 8, device="meta"), ratio=0.5, importance="bn_scale")
    with pytest.raises(ValueError, match=r"e\.g\. \['0', '1', '2'"):
        rp.prune(model, X, ratio=0.5, ignore=["nope"])
