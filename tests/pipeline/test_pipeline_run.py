"""End to end on a tiny Fashion-MNIST subset: artifacts, exact resume, phase re-runs, guards."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

import regprune.train.engine as engine
from regprune import count, load_pruned
from regprune.data import DatasetNotFoundError
from regprune.models import create_model
from regprune.pipeline import (
    ConfigError,
    RunDir,
    RunDirError,
    RunOutcome,
    apply_overrides,
    config_from_dict,
    load_config,
    run_pipeline,
)
from regprune.pipeline import phases as phases_module
from regprune.report import RunSummary, load_snapshot, read_metrics
from tests.pipeline.tiny_run import needs_fashion_mnist, tiny_config, torch_globals_restored

pytestmark = needs_fashion_mnist

COMMAND = "regprune run tiny.yaml"


def run(run_dir: Path, overrides: Sequence[str] = (), **kwargs: Any) -> RunOutcome:
    """Run the tiny config into ``run_dir`` in this process."""
    config = config_from_dict(apply_overrides(tiny_config(run_dir), overrides))
    return run_pipeline(config, command=COMMAND, **kwargs)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run, shared by the tests that only read it (or copy it)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    with torch_globals_restored():
        run(run_dir)
    return run_dir


def test_a_run_writes_every_artifact_inside_its_directory(finished_run: Path):
    names = {p.relative_to(finished_run).as_posix() for p in finished_run.rglob("*")}
    expected = {
        "config.yaml",
        "progress.json",
        "metrics.jsonl",
        "checkpoints/pretrain.pt",
        "checkpoints/sparsify.pt",
        "checkpoints/prune.pt",
        "checkpoints/finetune.pt",
        "sparsity/epoch_000.pt",
        "sparsity/epoch_001.pt",
        "sparsity/epoch_002.pt",
        "plan.json",
        "pruned.pt",
        "finetuned.pt",
        "summary.json",
        "report.md",
        "plots",
    }
    assert expected <= names
    assert any(name.startswith("plots/") and name.endswith(".png") for name in names)
    assert sorted(p.name for p in finished_run.parent.iterdir()) == ["run"]
    assert not [name for name in names if name.endswith(".tmp")]


def test_tensorboard_mirrors_every_training_phase(finished_run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(finished_run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"pretrain/train_loss", "sparsify/val_acc", "finetune/lr"} <= tags
    records = [r for r in read_metrics(finished_run) if r["phase"] == "sparsify"]
    logged = [e.value for e in events.Scalars("sparsify/train_loss")]
    assert logged == pytest.approx([r["train_loss"] for r in records], rel=1e-6)


def test_the_summary_holds_every_number_the_issue_asks_for(finished_run: Path):
    summary = RunSummary.load(finished_run)

    assert (summary.method, summary.model, summary.dataset) == (
        "masksparsity",
        "resnet20",
        "fashion-mnist",
    )
    assert summary.command == COMMAND
    assert summary.target_macs == 0.5 and summary.ratio is None
    # Loose: meeting the budget within 1% is the allocation's contract, tested there.
    assert summary.macs_after == pytest.approx(0.5 * summary.macs_before, rel=0.05)
    assert summary.params_after < summary.params_before
    accuracies = (
        summary.acc_baseline,
        summary.acc_before_prune,
        summary.acc_after_prune,
        summary.acc_after_finetune,
    )
    for values in accuracies:
        assert values is not None and len(values) == 1 and 0.0 <= values[0] <= 1.0
    assert sorted(summary.latency_ms_before) == sorted(summary.latency_ms_after) == [1, 4]
    # image inputs: both models timed in both layouts, each reported in its faster one
    layouts = {"contiguous", "channels_last"}
    for which in ("before", "after"):
        assert sorted(summary.latency_layouts[which]) == [1, 4]
        assert set(summary.latency_layouts[which].values()) <= layouts
    assert list(summary.phase_time_s) == ["pretrain", "sparsify", "prune", "finetune"]
    assert all(seconds > 0 for seconds in summary.phase_time_s.values())
    assert any(before > after for before, after in summary.layer_widths.values())
    report = (finished_run / "report.md").read_text()
    assert COMMAND in report and "MACs" in report
    assert f"| accuracy | {100 * summary.acc_baseline[0]:.2f} % |" in report


def test_the_final_model_reloads_with_the_summary_cost(finished_run: Path):
    summary = RunSummary.load(finished_run)
    original = create_model("resnet20", num_classes=10, in_channels=1, shortcut="A")
    model = load_pruned(original, finished_run / "finetuned.pt")

    assert count(model, torch.zeros(1, 1, 28, 28)).macs == summary.macs_after


def test_metrics_snapshots_and_config_are_readable(finished_run: Path):
    records = read_metrics(finished_run)
    epochs = [(r["phase"], r["epoch"]) for r in records]
    assert epochs == [
        ("pretrain", 1),
        ("sparsify", 1),
        ("sparsify", 2),
        ("finetune", 1),
        ("finetune", 2),
    ]
    snapshot = load_snapshot(finished_run / "sparsity" / "epoch_002.pt")
    assert snapshot and all(values.dim() == 1 for values in snapshot.values())
    config = load_config(finished_run / "config.yaml")
    assert config == config_from_dict(tiny_config(finished_run))
    progress = json.loads((finished_run / "progress.json").read_text())
    assert list(progress["phases"]) == ["pretrain", "sparsify", "prune", "finetune", "report"]


class SimulatedKill(Exception):
    """Stands in for SIGKILL: raised mid-phase, after some files are written."""


def _kill_at_epoch(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """Die when the trainer starts its ``call``-th epoch of the run (1 = pretrain epoch 1)."""
    real = engine.train_one_epoch
    calls = {"n": 0}

    def train_one_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise SimulatedKill(f"killed at epoch call {call}")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", train_one_epoch)


def _kill_in_surgery(monkeypatch: pytest.MonkeyPatch) -> None:
    def save_pruned(*args, **kwargs):
        raise SimulatedKill("killed while saving the pruned model")

    monkeypatch.setattr(phases_module, "save_pruned", save_pruned)


@pytest.mark.parametrize(
    "kill",
    [
        pytest.param(lambda mp: _kill_at_epoch(mp, 3), id="sparsify-epoch-2"),
        pytest.param(_kill_in_surgery, id="prune"),
        pytest.param(lambda mp: _kill_at_epoch(mp, 5), id="finetune-epoch-2"),
    ],
)
def test_resume_after_a_kill_ends_exactly_where_an_uninterrupted_run_does(
    tmp_path, monkeypatch, finished_run, kill
):
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        kill(patch)
        with pytest.raises(SimulatedKill):
            run(run_dir)
    assert not (run_dir / "summary.json").exists()

    outcome = run(run_dir, resume=True)

    assert outcome.ran and outcome.ran[-1] == "report"
    final = torch.load(run_dir / "finetuned.pt", weights_only=True)["state_dict"]
    expected = torch.load(finished_run / "finetuned.pt", weights_only=True)["state_dict"]
    assert final.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(final[key], value), key
    ours, theirs = RunSummary.load(run_dir), RunSummary.load(finished_run)
    assert ours.acc_before_prune == theirs.acc_before_prune
    assert ours.acc_after_prune == theirs.acc_after_prune
    assert ours.acc_after_finetune == theirs.acc_after_finetune
    assert ours.layer_widths == theirs.layer_widths
    assert ours.command == COMMAND

    def comparable(records):
        return [{k: v for k, v in r.items() if k != "time_s"} for r in records]

    assert comparable(read_metrics(run_dir)) == comparable(read_metrics(finished_run))
    for name in ("epoch_001.pt", "epoch_002.pt"):
        ours_snap = load_snapshot(run_dir / "sparsity" / name)
        for key, value in load_snapshot(finished_run / "sparsity" / name).items():
            assert torch.equal(ours_snap[key], value), (name, key)


def test_a_second_full_run_into_the_same_directory_is_refused(finished_run: Path):
    with pytest.raises(RunDirError, match="already holds a run; pass --resume"):
        run(finished_run)


def test_resume_refuses_changed_settings_of_completed_phases(finished_run: Path):
    with pytest.raises(ConfigError, match=r"method\.kwargs\.s: 0\.01 -> 0\.02"):
        run(finished_run, ["method.kwargs.s=0.02"], resume=True)


def test_resuming_a_finished_run_runs_nothing(finished_run: Path):
    assert run(finished_run, resume=True).ran == ()


def test_a_phase_can_run_again_and_discards_the_later_phases(tmp_path, finished_run: Path):
    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run, run_dir)

    outcome = run(run_dir, ["finetune.epochs=1"], phases=["finetune"])

    assert outcome.ran == ("finetune",)
    assert not (run_dir / "summary.json").exists() and not (run_dir / "plots").exists()
    finetune_epochs = [r["epoch"] for r in read_metrics(run_dir) if r["phase"] == "finetune"]
    assert finetune_epochs == [1]
    assert run(run_dir, ["finetune.epochs=1"], phases=["report"]).ran == ("report",)
    assert (run_dir / "report.md").is_file()


def test_a_phase_needs_the_earlier_phases(tmp_path):
    with pytest.raises(RunDirError, match="phase prune needs the results of pretrain, sparsify"):
        run(tmp_path / "run", phases=["prune"])


def test_a_pretrained_baseline_is_reused(tmp_path, finished_run: Path):
    baseline = finished_run / "checkpoints" / "pretrain.pt"

    run(tmp_path / "run", [f"pretrain.checkpoint={baseline}"], phases=["pretrain"])

    ours = torch.load(tmp_path / "run" / "checkpoints" / "pretrain.pt", weights_only=True)
    theirs = torch.load(baseline, weights_only=True)
    for key, value in theirs["model"].items():
        assert torch.equal(ours["model"][key], value), key
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert progress["phases"]["pretrain"]["baseline"] == str(baseline.resolve())


def test_a_missing_data_set_fails_before_anything_is_written(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="CIFAR-10 not found"):
        run(tmp_path / "run", ["data.name=cifar10", f"data.root={tmp_path / 'nowhere'}"])
    assert not (tmp_path / "run").exists()


def test_a_method_that_rejects_its_kwargs_fails_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="method 'masksparsity' rejects its settings"):
        run(tmp_path / "run", ["method.kwargs.strength=3"])
    assert not (tmp_path / "run").exists()


def test_the_run_directory_refuses_paths_that_escape_through_a_symlink(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").symlink_to(tmp_path)
    run_dir = RunDir(tmp_path / "run")

    with pytest.raises(RunDirError, match="outside the run directory"):
        run_dir.checkpoint("pretrain")
    assert run_dir.path("report.md") == (tmp_path / "run" / "report.md").resolve()
