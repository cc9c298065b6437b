"""The method benchmark harness: its config rules, and one tiny run -> latency -> report.

The shipped configs are loaded as they are (they are what docs/benchmarks.md reports), and a
run on a few hundred real Fashion-MNIST images checks that every recorded figure is what it
claims: the MACs target met, the saved model is the one measured, speedup = latency ratio.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from benchmarks.methods import latency, report, run
from benchmarks.methods.config import load_config
from benchmarks.methods.phases import cached
from torch import nn

import regprune as rp
from regprune.models import create_model
from regprune.pipeline.sections import TrainSection
from tests.methods.fmnist import needs_fmnist

CONFIGS = Path(__file__).resolve().parents[2] / "benchmarks" / "methods" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads_with_known_models_and_methods(path: Path) -> None:
    config = load_config(path)
    assert config.model.name in rp.models.list_models()
    ours = set(rp.methods.available())
    assert all(r.method in ours for r in config.runs if r.family != "tp"), config.name
    assert config.runs and 0 < config.target_macs < 1


def test_derived_configs_take_the_runs_and_strengths_of_their_base() -> None:
    cpu = load_config(CONFIGS / "cpu.yaml")
    smoke = load_config(CONFIGS / "smoke.yaml")
    vgg = load_config(CONFIGS / "cpu_vgg.yaml")

    def methods(config):
        return [(r.label, r.method, r.kwargs) for r in config.runs]

    assert methods(smoke) == methods(cpu)  # same methods and strengths, smaller data
    smoke_l0 = next(r for r in smoke.runs if r.label == "l0_channel")
    assert smoke_l0.sparsify_phase.epochs == smoke.sparsify.epochs  # its own epochs
    assert (smoke.name, smoke.data.subset) == ("smoke", 256)
    assert (vgg.model.name, vgg.model.kwargs) == ("vgg11", {"width": 0.5})
    structured = [r for r in cpu.runs if r.family != "unstructured"]
    assert [r.label for r in vgg.runs] == [r.label for r in structured]
    for ours, base in zip(vgg.runs, structured, strict=True):  # same epochs, one strength moved
        changed = {k for k in ours.kwargs if ours.kwargs[k] != base.kwargs.get(k)}
        assert changed == ({"lam"} if ours.label == "l0_channel" else set()), ours.label
        assert ours.sparsify_phase == base.sparsify_phase
    assert vgg.baseline_key(0) != cpu.baseline_key(0)  # another model, another baseline
    assert vgg.latency_out.name == "cpu_vgg_latency.jsonl"


def test_l0_runs_change_the_optimizer_of_the_sparsify_phase_but_not_its_length() -> None:
    cpu = load_config(CONFIGS / "cpu.yaml")
    by_label = {r.label: r for r in cpu.runs}
    for label in ("l0_channel", "l0_weight"):
        phase = by_label[label].sparsify_phase
        assert phase is not None and phase.optimizer == "adam" and phase.weight_decay == 0.0
        assert phase.epochs == cpu.sparsify.epochs
    assert by_label["greg1"].sparsify_phase is None


def _write(tmp_path: Path, **changes) -> Path:
    raw = {
        "name": "tiny",
        "model": "resnet20",
        "dataset": "fashionmnist",
        "data_root": None,
        "train_subset": 192,
        "test_subset": 100,
        "seeds": [0],
        "batch_size": 64,
        "target_macs": 0.5,
        "max_ratio": 0.7,
        "calibration_batches": 2,
        "cache_dir": str(tmp_path / "cache"),
        "out": str(tmp_path / "out" / "tiny.jsonl"),
        "pretrain": {"epochs": 1, "lr": 0.1},
        "sparsify": {"epochs": 1, "lr": 0.05, "schedule": "constant"},
        "finetune": {"epochs": 1, "lr": 0.01},
        "latency": {"rounds": 1, "batches": [1, 8]},
        "runs": [
            {"label": "l1", "method": "oneshot", "kwargs": {"importance": "l1"}},
            {
                "label": "l0_channel",
                "method": "l0_channel",
                "kwargs": {"lam": 2.5, "gate_lr_scale": 50},
                "sparsify_phase": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0},
            },
            {
                "label": "magnitude",
                "family": "unstructured",
                "method": "magnitude_unstructured",
                "ratios": [0.5],
                "sparsify": "plain",
            },
        ],
    } | changes
    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_kwargs_overrides_must_name_an_existing_run(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, kwargs_overrides={"l1": {"seed": 3}}))
    assert next(r for r in config.runs if r.label == "l1").kwargs == {"importance": "l1", "seed": 3}
    with pytest.raises(ValueError, match="does not exist: l2"):
        load_config(_write(tmp_path, kwargs_overrides={"l2": {"seed": 3}}))


def test_a_run_may_not_change_the_epochs_every_method_shares(tmp_path: Path) -> None:
    runs = [{"label": "x", "method": "slimming", "sparsify_phase": {"epochs": 5}}]
    with pytest.raises(ValueError, match="sparsify_phase keys \\['epochs'\\] unknown"):
        load_config(_write(tmp_path, runs=runs))


def test_phases_are_the_pipelines_train_sections_with_the_shared_weight_decay(tmp_path: Path):
    config = load_config(_write(tmp_path, weight_decay=1e-3, finetune={"epochs": 1, "lr": 0.01}))
    assert isinstance(config.sparsify, TrainSection)
    assert config.finetune.weight_decay == 1e-3  # not set by the phase: the config's
    l0 = next(r for r in config.runs if r.label == "l0_channel").sparsify_phase
    assert (l0.optimizer, l0.lr, l0.weight_decay) == ("adam", 1e-3, 0.0)
    assert (l0.epochs, l0.schedule) == (config.sparsify.epochs, "constant")
    assert config.data.val_fraction == 0.0  # judged on the test set, no validation split


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pretrain": {"epochs": 0, "lr": 0.1}}, "pretrain.epochs: every benchmark phase runs"),
        ({"finetune": {"epochs": 1, "lr": 0.01, "schedule": "linear"}}, "finetune.schedule"),
        ({"sparsify": {"epochs": 1, "lr": "fast"}}, "sparsify.lr: expected float"),
        ({"dataset": "imagenet-21k"}, "data.name"),
        ({"model": "resnet2000"}, "unknown model 'resnet2000'"),
        ({"target_macs": 1.5}, "target_macs must be in"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(_write(tmp_path, **changes))


def test_cached_models_are_written_once_atomically_and_read_weights_only(tmp_path: Path):
    path = tmp_path / "cache" / "m-baseline.pt"
    built = []

    def build():
        built.append(1)
        return {"w": torch.arange(3.0)}, {"time_s": 1.5}

    first = cached(path, build)
    again = cached(path, build)
    assert built == [1]  # the second call reads the file
    assert torch.equal(again[0]["w"], first[0]["w"]) and again[1] == {"time_s": 1.5}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left

    path.write_bytes(path.read_bytes()[:-40])  # a truncated file, as a killed writer leaves
    with pytest.raises(ValueError, match=re.escape(str(path))):
        cached(path, build)


@needs_fmnist
def test_tiny_benchmark_records_what_it_measured(tmp_path: Path) -> None:
    path = _write(tmp_path)
    config = load_config(path)
    run.main([str(path)])
    rows = {r["label"]: r for r in map(json.loads, Path(config.out).read_text().splitlines())}
    assert {r["status"] for r in rows.values()} == {"ok"}, rows
    x = torch.randn(1, 1, 28, 28)
    for label in ("l1", "l0_channel"):
        row = rows[label]
        assert 0.49 * row["macs_before"] <= row["macs_after"] <= 0.5 * row["macs_before"]
        assert row["flops_after"] == 2 * row["macs_after"]
        assert 0.0 <= row["acc_after_prune_bn"] <= 1.0
        saved = rp.load_pruned(create_model("resnet20", in_channels=1), row["model_file"])
        assert rp.count(saved, x).macs == row["macs_after"]  # the file is the model measured
        for name, conv in create_model("resnet20", in_channels=1).named_modules():
            if isinstance(conv, nn.Conv2d):  # max_ratio 0.7: at most 70% of a group removed
                kept = saved.get_submodule(name).out_channels
                assert kept >= conv.out_channels - int(0.7 * conv.out_channels), name
    assert rows["l0_channel"]["sparsify_stats"]["l0/expected"] > 0
    unstructured = rows["magnitude@0.5"]
    assert unstructured["weight_sparsity_after"] == pytest.approx(0.5, abs=0.01)
    assert unstructured["macs_after"] == unstructured["macs_before"]

    latency.main([str(path)])
    timings = [json.loads(line) for line in config.latency_out.read_text().splitlines()]
    assert sorted(t["label"] for t in timings) == ["l0_channel", "l1"]  # structured only
    for t in timings:
        for batch in (1, 8):
            ratio = t[f"latency_b{batch}_ms_before"] / t[f"latency_b{batch}_ms_after"]
            assert t[f"speedup_b{batch}"] == pytest.approx(ratio)
            assert t[f"efficiency_b{batch}"] == pytest.approx(ratio / t["macs_ratio"])

    # A second MACs target from the same cached baseline, for the accuracy-vs-MACs plot.
    other = _write(
        tmp_path,
        name="tiny03",
        target_macs=0.3,
        only=["l1"],
        out=str(tmp_path / "out" / "tiny03.jsonl"),
    )
    run.main([str(other)])
    assert len(list((tmp_path / "cache").glob("*-baseline.pt"))) == 1  # shared, not retrained
    (row03,) = map(json.loads, Path(load_config(other).out).read_text().splitlines())
    assert row03["macs_after"] <= 0.3 * row03["macs_before"]
    assert row03["acc_baseline"] == rows["l1"]["acc_baseline"]

    report.main([str(path), "--with", str(other), "--reference", "l1"])
    folder = Path(config.out).parent
    tables = (folder / "tiny_tables.md").read_text()
    assert "| l0_channel | 0 |" in tables and "| magnitude@0.5 | 0 |" in tables
    assert "Not finished: none." in tables
    gap = 100 * (rows["l0_channel"]["acc_after_finetune"] - rows["l1"]["acc_after_finetune"])
    assert f"| l0_channel | 1 | {gap:.2f} | {gap:+.2f} |" in tables  # paired by seed
    l1_line = next(
        line for line in tables.splitlines() if line.startswith("| l1 | ") and "(1)" in line
    )
    assert l1_line.count("(1)") == 2  # accuracy at both targets, one seed each
    for png in ("tiny_acc_vs_macs.png", "tiny_pareto.png"):
        assert (folder / png).stat().st_size > 0
