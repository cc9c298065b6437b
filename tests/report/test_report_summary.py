"""RunSummary: validation at construction, JSON round trip, atomic save, clear load errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from regprune.report import RunSummary, describe_machine
from tests.report.fake_run import make_summary

_ACCURACIES = ("acc_before_prune", "acc_after_prune", "acc_after_finetune")


def test_json_round_trip_restores_types() -> None:
    summary = make_summary(seeds=[0, 1], **{k: [0.5, 0.6] for k in _ACCURACIES})
    restored = RunSummary.from_json(summary.to_json())
    assert restored == summary
    assert restored.latency_ms_before == {1: 2.5, 64: 80.0}  # int batch sizes, not "1"
    assert restored.layer_widths["conv1"] == (16, 8)  # tuples, not lists


def test_latency_layouts_round_trip_and_older_summaries_without_them_load() -> None:
    layouts = {
        "before": {1: "contiguous", 64: "contiguous"},
        "after": {1: "contiguous", 64: "channels_last"},
    }
    summary = make_summary(latency_layouts=layouts)
    restored = RunSummary.from_json(summary.to_json())
    assert restored.latency_layouts == layouts  # int batch sizes again
    older = json.loads(make_summary().to_json())
    del older["latency_layouts"]
    assert RunSummary.from_json(json.dumps(older)).latency_layouts == {}


def test_flops_are_derived_never_stored() -> None:
    summary = make_summary()
    assert summary.flops_before == 2 * summary.macs_before
    assert summary.flops_after == 2 * summary.macs_after
    assert not any("flops" in key for key in json.loads(summary.to_json()))


def test_speedup_and_macs_ratio() -> None:
    summary = make_summary()
    assert summary.macs_ratio == pytest.approx(2.0)
    assert summary.speedup(64) == pytest.approx(1.6)


def test_save_then_load(tmp_path: Path) -> None:
    summary = make_summary(target_macs=0.4, ratio=None)
    path = summary.save(tmp_path / "new" / "run")
    assert path == tmp_path / "new" / "run" / "summary.json"
    assert RunSummary.load(path.parent) == summary
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]  # no temp file left


def test_failed_save_keeps_previous_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_summary().save(tmp_path)

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        make_summary(acc_after_finetune=[0.1]).save(tmp_path)
    monkeypatch.undo()
    assert RunSummary.load(tmp_path).acc_after_finetune == [0.9087]
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_load_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "summary.json")):
        RunSummary.load(tmp_path)
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match=str(tmp_path / "summary.json")):
        RunSummary.load(tmp_path)


def test_from_json_rejects_missing_unknown_and_future_fields() -> None:
    data = json.loads(make_summary().to_json())
    with pytest.raises(ValueError, match=r"missing fields \['macs_after'\]"):
        RunSummary.from_json(json.dumps({k: v for k, v in data.items() if k != "macs_after"}))
    with pytest.raises(ValueError, match=r"unknown summary fields \['flops_after'\]"):
        RunSummary.from_json(json.dumps({**data, "flops_after": 1}))
    with pytest.raises(ValueError, match="newer"):
        RunSummary.from_json(json.dumps({**data, "schema_version": 99}))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"acc_after_finetune": [90.87]}, "fractions in \\[0, 1\\]"),
        ({"acc_before_prune": [0.9, 0.8]}, "2 values for 1 seeds"),
        ({"seeds": []}, "at least one seed"),
        ({"target_macs": 0.5}, "at most one target"),
        ({"weight_sparsity": 1.5}, "weight_sparsity must be a fraction"),
        ({"macs_after": -1}, "macs_after must be >= 0"),
        ({"latency_ms_after": {1: 1.0}}, "same batch sizes"),
    ],
)
def test_invalid_summaries_are_rejected(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_summary(**overrides)


def test_machine_defaults_to_this_machine() -> None:
    fields = {k: v for k, v in vars(make_summary()).items() if k != "machine"}
    summary = RunSummary(**fields)
    assert summary.machine == describe_machine()
    assert "torch" in summary.machine and "CPUs" in summary.machine
