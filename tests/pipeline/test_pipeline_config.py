"""The run config schema: every error names the key, and overrides parse like YAML values."""

from __future__ import annotations

from pathlib import Path

import pytest

from regprune.pipeline import (
    ConfigError,
    RunConfig,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
    parse_override,
)
from regprune.pipeline.config import changed_keys
from tests.pipeline.tiny_run import tiny_config, write_config


@pytest.fixture
def tiny(tmp_path: Path) -> dict:
    return tiny_config(tmp_path / "run")


def test_a_valid_config_fills_defaults_and_types(tiny):
    config = config_from_dict(tiny)

    assert isinstance(config, RunConfig)
    assert config.method.kwargs == {"s": 1e-2, "mask_iters": 2}
    assert config.finetune.weight_decay == 5e-4  # default
    assert config.pretrain.checkpoint is None
    assert config.report.latency_batch_sizes == [1, 4]


def test_unknown_key_names_the_key_its_section_and_the_allowed_keys(tiny):
    tiny["data"]["batchsize"] = 32

    with pytest.raises(ConfigError) as error:
        config_from_dict(tiny)

    message = str(error.value)
    assert "'batchsize'" in message and "section 'data'" in message
    assert "did you mean 'batch_size'" in message
    assert "allowed keys: name, root, subset, batch_size, val_fraction, workers, augment" in message


def test_unknown_top_level_key_lists_the_sections(tiny):
    tiny["finetuning"] = {"epochs": 1}

    with pytest.raises(ConfigError, match=r"'finetuning' in section 'top level'.*finetune"):
        config_from_dict(tiny)


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("finetune", "epochs", "three", "finetune.epochs: expected int, got 'three' (str)"),
        ("finetune", "lr", True, "finetune.lr: expected float, got True (bool)"),
        ("data", "subset", 1.5, "data.subset: expected int or null, got 1.5 (float)"),
        ("model", "kwargs", [1], "model.kwargs: expected a mapping, got [1] (list)"),
        ("report", "latency_batch_sizes", [1, "x"], "latency_batch_sizes[1]: expected int"),
    ],
)
def test_wrong_type_names_the_key_the_expected_type_and_the_value(
    tiny, section, key, value, expected
):
    tiny[section][key] = value

    with pytest.raises(ConfigError) as error:
        config_from_dict(tiny)

    assert expected in str(error.value)


def test_a_section_that_is_not_a_mapping_is_an_error(tiny):
    tiny["prune"] = 3

    with pytest.raises(ConfigError, match="prune: expected a mapping"):
        config_from_dict(tiny)


def test_missing_required_key(tiny):
    del tiny["method"]["name"]

    with pytest.raises(ConfigError, match=r"missing required key 'method\.name'"):
        config_from_dict(tiny)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": {"ratio": 0.3}}, "one of ratio and target_macs, not both"),
        ({"method": {"target_macs": 1.5}}, r"method: target_macs must be in \(0, 1\]"),
        ({"method": {"name": "nope"}}, "unknown method 'nope'; available: adapruner"),
        ({"model": {"name": "resnet21"}}, "unknown model 'resnet21'"),
        ({"data": {"name": "imagenet21k"}}, "unknown data set 'imagenet21k'"),
        ({"finetune": {"schedule": "linear"}}, "finetune.schedule: must be one of cosine"),
        ({"sparsify": {"epochs": -1}}, "sparsify.epochs: must be >= 0"),
        ({"sparsify": {"optimizer": "rmsprop"}}, "sparsify.optimizer: must be one of sgd, adam"),
        (
            {"finetune": {"optimizer": "adam", "nesterov": True}},
            "finetune.nesterov: needs optimizer sgd",
        ),
        ({"output": {"run_dir": "runs/../../etc"}}, r"output.run_dir: must not contain '\.\.'"),
        ({"method": {"kwargs": {"ratio": 0.5}}}, "method.kwargs.ratio: set it as method.ratio"),
    ],
)
def test_values_out_of_range_are_named(tiny, change, message):
    for section, values in change.items():
        tiny[section].update(values) if section in tiny else tiny.update({section: values})

    with pytest.raises(ConfigError, match=message):
        config_from_dict(tiny)


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("method.kwargs.s=1e-4", ["method", "kwargs", "s"], 1e-4),
        ("finetune.epochs=3", ["finetune", "epochs"], 3),
        ("method.ratio=null", ["method", "ratio"], None),
        ("report.latency_batch_sizes=[1, 64]", ["report", "latency_batch_sizes"], [1, 64]),
        ("model.kwargs.shortcut=B", ["model", "kwargs", "shortcut"], "B"),
        ("output.run_dir='3'", ["output", "run_dir"], "3"),
        ("data.root=", ["data", "root"], None),
        ("seed=-1", ["seed"], -1),
    ],
)
def test_parse_override_reads_the_value_as_yaml(text, path, value):
    assert parse_override(text) == (path, value)


@pytest.mark.parametrize("text", ["finetune.epochs", "=3", "a..b=1", "x=[1,"])
def test_malformed_overrides_are_errors(text):
    with pytest.raises(ConfigError, match="override"):
        parse_override(text)


def test_overrides_apply_in_order_create_sections_and_leave_the_input_alone(tiny):
    original = {"method": dict(tiny["method"])}

    result = apply_overrides(
        tiny,
        [
            "method.kwargs.s=1e-4",
            "method.target_macs=null",
            "method.ratio=0.4",
            "finetune.epochs=5",
            "finetune.epochs=6",
            "model.kwargs.shortcut=B",
        ],
    )
    config = config_from_dict(result)

    assert config.method.kwargs["s"] == 1e-4
    assert (config.method.ratio, config.method.target_macs) == (0.4, None)
    assert config.finetune.epochs == 6
    assert config.model.kwargs == {"shortcut": "B"}
    assert tiny["method"] == original["method"]
    assert apply_overrides({}, ["report.latency_repeats=2"]) == {"report": {"latency_repeats": 2}}


def test_an_override_through_a_value_is_an_error(tiny):
    with pytest.raises(ConfigError, match="seed is a value"):
        apply_overrides(tiny, ["seed.x=1"])


def test_an_override_of_an_unknown_key_gets_the_unknown_key_error(tiny):
    with pytest.raises(ConfigError, match="'epoch' in section 'finetune'"):
        config_from_dict(apply_overrides(tiny, ["finetune.epoch=3"]))


def test_yaml_exponents_without_a_dot_are_floats(tmp_path, tiny):
    path = write_config(tmp_path / "c.yaml", tiny)
    path.write_text(path.read_text().replace("s: 0.01", "s: 1e-2"))
    assert "s: 1e-2" in path.read_text()

    config = load_config(path, ["finetune.lr=5e-3"])

    assert config.method.kwargs["s"] == 1e-2
    assert config.finetune.lr == 5e-3


def test_load_config_names_the_file_and_dump_round_trips(tmp_path, tiny):
    config = load_config(write_config(tmp_path / "c.yaml", tiny))
    (tmp_path / "resolved.yaml").write_text(dump_config(config))

    assert load_config(tmp_path / "resolved.yaml") == config
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'x'"):
        load_config(tmp_path / "c.yaml", ["x=1"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_yaml_tags_that_build_objects_are_refused(tmp_path):
    (tmp_path / "evil.yaml").write_text("seed: !!python/object/apply:os.getcwd []\n")

    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "evil.yaml")


def test_changed_keys_lists_differences_in_the_given_sections_only(tiny):
    old = config_from_dict(tiny)
    new = config_from_dict(
        apply_overrides(tiny, ["finetune.epochs=9", "method.kwargs.s=0.5", "seed=3"])
    )

    assert changed_keys(old, new, ["method", "seed"]) == [
        "method.kwargs.s: 0.01 -> 0.5",
        "seed: 0 -> 3",
    ]
    assert changed_keys(old, new, ["data"]) == []
