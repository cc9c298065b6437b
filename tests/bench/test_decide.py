"""The decisive protocol (issue 19): plateau baselines, published baselines with their sha256,
budgets as a share of the baseline's epochs, several MACs targets, claim rows, the data held on
the device, workers sharing a config; at tiny scale on the CPU."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from benchmarks.methods import baselines, latency, report, run
from benchmarks.methods.config import load_config
from benchmarks.methods.data import DeviceLoader, build_bench_data
from benchmarks.methods.phases import (
    baseline_path,
    new_model,
    pretrained_baseline,
    train_until_plateau,
)
from benchmarks.methods.tp_peers import budget_kwargs

from regprune.io import atomic_torch_save
from regprune.train import Trainer, seed_everything
from tests.methods.fmnist import needs_fmnist

CONFIGS = Path(__file__).resolve().parents[2] / "benchmarks" / "methods" / "configs"


def _write(tmp_path: Path, **changes) -> Path:
    raw = {
        "name": "tinydecide",
        "model": "lenet5",
        "dataset": "fashionmnist",
        "data_root": None,
        "train_subset": 192,
        "test_subset": 100,
        "seeds": [0],
        "batch_size": 64,
        "target_macs": [0.5, 0.25],
        "max_ratio": 0.7,
        "calibration_batches": 1,
        "cache_dir": str(tmp_path / "cache"),
        "out": str(tmp_path / "out" / "tinydecide.jsonl"),
        # min_delta 0.5: no epoch can add 50 points, so each stage stops after patience + 1
        "pretrain": {
            "until_plateau": {"patience": 1, "max_epochs": 5, "min_delta": 0.5, "drops": 1},
            "lr": 0.05,
        },
        "sparsify": {"share": 0.5, "lr": 0.05, "schedule": "constant"},
        "finetune": {"share": 0.25, "lr": 0.01},
        "runs": [{"label": "l1", "method": "oneshot", "kwargs": {"importance": "l1"}}],
    } | changes
    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    "name", ["decide", "decide_s03", "decide_vgg", "decide_gpu", "decide_gpu_r110"]
)
def test_decide_configs_run_every_method_in_budget_mode_at_three_targets(name: str) -> None:
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.targets == (0.5, 0.25, 0.125) and len(config.seeds) == 3
    assert config.plateau is not None and config.data.subset is None
    assert config.budget_mode and config.tp_reg_from_budget
    strengths = {"lam", "s", "delta", "reg", "delta_reg", "mask_s", "tau"}
    for spec in config.runs:  # no strength anywhere: the budget sizes every method
        assert not strengths & set(spec.kwargs), spec.label
    peers = {r.method for r in config.runs if r.family == "tp"}
    assert peers == {"magnitude", "bn_scale", "group_norm", "growing_reg"}
    ratios = {r.ratio for r in config.runs if r.family == "unstructured" and r.claim is None}
    assert ratios <= {0.8, 0.9, 0.95}


def test_decide_claims_name_their_own_targets_and_models() -> None:
    config = load_config(CONFIGS / "decide.yaml")
    claims = {r.claim.paper: r for r in config.runs if r.claim is not None}
    assert sorted(claims) == ["AdaPruner", "GReg-2", "HGSR", "L0", "MaskSparsity"]
    assert claims["MaskSparsity"].target_macs == 0.4 and claims["GReg-2"].target_macs == 0.4
    assert claims["HGSR"].claim.metric == "params" and claims["HGSR"].claim.max_drop == 0.3
    assert claims["L0"].model.name == "lenet5" and claims["L0"].ratio == 0.95
    assert claims["AdaPruner"].model.name == "mobilenetv2"
    assert config.targets_of(claims["AdaPruner"]) == [0.67]


def test_a_share_budget_becomes_epochs_of_the_baseline(tmp_path: Path) -> None:
    runs = [
        {"label": "l1", "method": "oneshot", "kwargs": {"importance": "l1"}},
        {"label": "l0", "method": "l0_channel", "sparsify_phase": {"optimizer": "adam"}},
    ]
    config = load_config(_write(tmp_path, runs=runs))
    resolved = config.resolved(37)
    assert (resolved.sparsify.epochs, resolved.finetune.epochs) == (18, 9)  # 0.5, 0.25 of 37
    assert resolved.runs[1].sparsify_phase.epochs == 18  # a run's own optimizer, same epochs
    assert resolved.runs[1].sparsify_phase.optimizer == "adam"
    assert config.resolved(1).finetune.epochs == 1  # at least one epoch
    assert resolved.plain_key(0) != config.resolved(40).plain_key(0)
    assert resolved.resolved(5) is resolved  # nothing left to resolve


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sparsify": {"share": 0.1, "epochs": 2, "lr": 0.05}}, "give epochs or share"),
        ({"finetune": {"share": 1.5, "lr": 0.01}}, "finetune.share"),
        ({"pretrain": {"until_plateau": {"patience": 0}, "lr": 0.1}}, "patience >= 1"),
        ({"pretrain": {"until_plateau": {}, "epochs": 3}}, "epochs or until_plateau"),
        ({"target_macs": [0.5, 0.5]}, "distinct"),
        ({"target_macs": [0.5, 1.5]}, "target_macs must be in"),
        (
            {
                "runs": [
                    {
                        "label": "c",
                        "method": "slimming",
                        "claim": {
                            "paper": "P",
                            "text": "t",
                            "metric": "flops",
                            "at_least": 0.5,
                            "max_drop": 0,
                        },
                    }
                ]
            },
            "claim.metric",
        ),
    ],
)
def test_decisive_config_errors_name_the_key(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(_write(tmp_path, **changes))


def test_tp_budget_rule_reproduces_the_hand_sized_strengths() -> None:
    # cpu.yaml: 94 sparsify steps at lr 0.05, momentum 0.9 (a step moves 0.5 x the gradient)
    assert budget_kwargs("bn_scale", 94, 0.05, 0.9)["reg"] == pytest.approx(7.5e-3, rel=0.01)
    assert budget_kwargs("group_norm", 94, 0.05, 0.9)["reg"] == pytest.approx(4e-3, rel=0.01)
    # gpu.yaml: 11730 steps at lr 0.01 (0.1 per step): its hand-sized 1.6e-4
    assert budget_kwargs("group_norm", 11730, 0.01, 0.9)["reg"] == pytest.approx(1.6e-4, rel=0.01)
    growing = budget_kwargs("growing_reg", 1000, 0.05, 0.9)
    assert growing["update_every"] == 20
    updates = 1000 // growing["update_every"]
    assert 0.5 * 0.5 * updates * growing["delta_reg"] * 1000 == pytest.approx(3.0)  # exp(-3)
    assert budget_kwargs("magnitude", 94, 0.05, 0.9) == {}
    with pytest.raises(ValueError, match="total_steps"):
        budget_kwargs("bn_scale", 0, 0.05, 0.9)


def test_device_loader_is_a_function_of_seed_and_epoch_and_pads_with_black() -> None:
    images = torch.randn(10, 1, 6, 6)
    labels = torch.arange(10)
    fill = torch.tensor([-0.81])

    def epoch(loader, e):
        loader.sampler.set_epoch(e)
        return list(loader)

    loader = DeviceLoader(images, labels, 4, seed=0, padding=2, hflip=True, fill=fill)
    again = DeviceLoader(images, labels, 4, seed=0, padding=2, hflip=True, fill=fill)
    assert len(loader) == 3 and [len(y) for _, y in epoch(loader, 0)] == [4, 4, 2]
    for (x, y), (x2, y2) in zip(epoch(loader, 1), epoch(again, 1), strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    order = torch.cat([y for _, y in epoch(loader, 1)])
    assert not torch.equal(order, torch.cat([y for _, y in epoch(loader, 2)]))
    batches = torch.cat([x for x, _ in epoch(loader, 3)])
    assert batches.shape == (10, 1, 6, 6)
    moved = torch.isin(batches, images)
    assert torch.all(moved | (batches == fill)) and not torch.all(moved)  # new pixels: black
    plain = DeviceLoader(images, labels, 10, seed=0, padding=0, hflip=False)
    (x, y), *_ = epoch(plain, 0)
    assert torch.equal(x, images[y])


def _fake_baseline(config, seed: int, acc: float = 0.5) -> Path:
    model = new_model(config, SimpleNamespace(num_classes=10, in_channels=1))
    meta = {"time_s": 1.0, "train_acc": acc, "epochs": 7, "test_acc": acc}
    path = baseline_path(config, seed)
    atomic_torch_save({"model": model.state_dict(), "meta": meta}, path)
    return path


def test_published_baselines_are_hash_checked(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, baselines_dir=str(tmp_path / "baselines")))
    cached_file = _fake_baseline(config, 0)
    baselines.main([str(_write(tmp_path, baselines_dir=str(tmp_path / "baselines")))])
    manifest = json.loads((tmp_path / "baselines" / "manifest.json").read_text())
    entry = manifest["lenet5-seed0.pt"]
    assert entry["sha256"] == baselines.sha256(cached_file)
    assert (entry["epochs"], entry["test_acc"], entry["key"]) == (7, 0.5, config.baseline_key(0))

    cached_file.unlink()  # read from the repository copy now, not trained again
    data = SimpleNamespace(num_classes=10, in_channels=1)
    _, meta = pretrained_baseline(config, data, 0)
    assert meta["epochs"] == 7 and not cached_file.exists()

    published = tmp_path / "baselines" / "lenet5-seed0.pt"
    state = torch.load(published, weights_only=True)
    first = next(iter(state["model"]))
    state["model"][first] += 1  # a changed file that still reads fine
    torch.save(state, published)
    with pytest.raises(ValueError, match=re.escape(str(published))) as error:
        pretrained_baseline(config, data, 0)
    assert "sha256" in str(error.value) and "git checkout" in str(error.value)
    other = replace(config, data=replace(config.data, subset=128))  # another key: not used
    assert baselines.find(other, 0) is None


@needs_fmnist
def test_plateau_stops_early_and_records_the_epochs(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, runs=[]))
    data = build_bench_data(config, 0)
    _, meta = pretrained_baseline(config, data, 0)
    assert meta["stage_epochs"] == [2, 2] and meta["epochs"] == 4 < config.plateau.max_epochs
    assert len(meta["test_acc_history"]) == 4 and meta["test_acc"] == meta["test_acc_history"][-1]
    _, again = pretrained_baseline(config, data, 0)  # cached: not trained again
    assert again == meta


class _Killed(Exception):
    """Stands for the process being killed right after a checkpoint was written."""


@needs_fmnist
@pytest.mark.parametrize("killed_after", [1, 2, 3])
def test_a_plateau_baseline_killed_mid_way_goes_on_to_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, killed_after: int
) -> None:
    """Killed after epoch 1 (inside the first stage), 2 (its last epoch: the next stage has not
    begun) or 3 (inside the second), the rerun ends with the uninterrupted run's weights and
    per-epoch accuracies."""
    config = load_config(_write(tmp_path, runs=[]))
    data = build_bench_data(config, 0)

    def train(progress: Path | None) -> tuple[torch.nn.Module, dict]:
        seed_everything(0)
        model = new_model(config, data)
        return model, train_until_plateau(model, data, config, config.plateau, progress)

    whole, whole_stats = train(None)
    assert whole_stats["stage_epochs"] == [2, 2]
    progress = tmp_path / "baseline.progress"
    save, saves = Trainer.save_checkpoint, []

    def save_then_die(self: Trainer, path: Path) -> None:
        save(self, path)
        saves.append(path)
        if len(saves) == killed_after:
            raise _Killed

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        train(progress)
    monkeypatch.undo()
    capsys.readouterr()
    resumed, stats = train(progress)
    trained = [int(n) for n in re.findall(r"epoch (\d+)", capsys.readouterr().out)]
    assert trained == list(range(killed_after + 1, 5))  # only what was left
    assert stats["test_acc"] == whole_stats["test_acc"]
    assert stats["stage_epochs"] == whole_stats["stage_epochs"] and stats["epochs"] == 4
    for name, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


@needs_fmnist
def test_tiny_decisive_benchmark_on_device_tensors_with_workers(tmp_path: Path) -> None:
    runs = [
        {"label": "l1", "method": "oneshot", "kwargs": {"importance": "l1"}, "sparsify": "plain"},
        {"label": "tp_group_norm", "family": "tp", "method": "group_norm"},
        {"label": "tp_magnitude", "family": "tp", "method": "magnitude", "sparsify": "plain"},
        {
            "label": "mag",
            "family": "unstructured",
            "method": "magnitude_unstructured",
            "ratios": [0.8],
            "sparsify": "plain",
        },
        {
            "label": "claim_l1",
            "method": "oneshot",
            "kwargs": {"importance": "l1"},
            "target_macs": 0.6,
            "model": "vgg11",
            "model_kwargs": {"width": 0.125},
            "claim": {"paper": "P", "text": "t", "metric": "macs", "at_least": 0.4, "max_drop": 99},
        },
    ]
    path = _write(
        tmp_path,
        runs=runs,
        data_on_device=True,
        latency={"rounds": 1, "batches": [1, 8]},
        amp=True,  # CUDA only: float32 on the CPU, the same code path
        tp_reg_from_budget=True,
    )
    config = load_config(path)
    assert config.pretrain.amp is False and config.data_on_device
    run.main([str(path), "--workers", "2"])
    rows = [json.loads(line) for line in Path(config.out).read_text().splitlines()]
    assert {r["status"] for r in rows} == {"ok"}, [r.get("error") for r in rows]
    keys = sorted((r["label"], r["target_macs"]) for r in rows)
    assert keys == [
        ("claim_l1", 0.6),
        ("l1", 0.25),
        ("l1", 0.5),
        ("mag@0.8", 0.5),
        ("tp_group_norm", 0.25),
        ("tp_group_norm", 0.5),
        ("tp_magnitude", 0.25),
        ("tp_magnitude", 0.5),
    ]  # each (run, target) once, whichever worker ran it
    for row in rows:
        if row["family"] != "unstructured":
            assert row["macs_after"] <= row["target_macs"] * row["macs_before"]
        assert (row["baseline_epochs"], row["sparsify_epochs"], row["finetune_epochs"]) == (4, 2, 1)
        assert Path(row["model_file"]).is_file()
    assert len({r["model_file"] for r in rows}) == len(rows)
    claim = next(r for r in rows if r["label"] == "claim_l1")
    assert claim["model"] == "vgg11" and claim["claim"]["paper"] == "P"
    assert len(list((tmp_path / "cache").glob("*-baseline.pt"))) == 2  # lenet5 and vgg11

    before = Path(config.out).read_text()
    run.main([str(path)])  # resumes: nothing left to run
    assert Path(config.out).read_text() == before

    latency.main([str(path)])  # the first target's models, against their baseline
    timed = [json.loads(line) for line in config.latency_out.read_text().splitlines()]
    assert sorted((t["label"], t["target_macs"]) for t in timed) == [
        ("l1", 0.5),
        ("tp_group_norm", 0.5),
        ("tp_magnitude", 0.5),
    ]
    report.main([str(path)])
    tables = (Path(config.out).parent / "tinydecide_tables.md").read_text()
    half, quarter = tables.split("## MACs target 0.25")
    l1_half = next(line for line in half.splitlines() if line.startswith("| l1 | 0 |"))
    l1_quarter = next(line for line in quarter.splitlines() if line.startswith("| l1 | 0 |"))
    assert l1_half.split(" | ")[9] != "-" and l1_quarter.split(" | ")[9] == "-"  # speedup b1
    assert "## MACs target 0.5" in tables and "## MACs target 0.25" in tables
    assert "against best_tp" in tables and "| mag@0.8 | 0 |" in tables
    assert "| claim | setting here | result | holds? |" in tables
    assert "| P: t | oneshot on vgg11 / fashionmnist, MACs 0.6" in tables
    assert "Not finished: none." in tables
    tp = [r for r in rows if r["family"] == "tp"]
    best = {
        t: max(r["acc_after_finetune"] for r in tp if r["target_macs"] == t) for t in (0.5, 0.25)
    }
    l1 = {r["target_macs"]: r["acc_after_finetune"] for r in rows if r["label"] == "l1"}
    for t in (0.5, 0.25):
        assert f"| l1 | 1 | {100 * (l1[t] - best[t]):.2f} |" in tables
    assert (Path(config.out).parent / "tinydecide_pareto.png").stat().st_size > 0


def test_claim_verdicts_follow_the_stated_rule() -> None:
    assert report.verdict([0.6, 0.62], [0.1, -0.05], 0.6, 0.0) == "yes"
    assert report.verdict([0.55, 0.56], [0.1, 0.2], 0.6, 0.0) == "no (reduction short)"
    assert report.verdict([0.6, 0.6, 0.6], [-0.1, 0.0, -0.2], 0.6, 0.0) == "within noise"
    assert report.verdict([0.6, 0.6, 0.6], [-1.0, -1.1, -0.9], 0.6, 0.3) == "no"


def test_done_runs_keys_by_target_and_skips_this_sessions_failures(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    rows = [
        {"label": "l1", "seed": 0, "target_macs": 0.5, "status": "ok"},  # an older record
        {"label": "l1", "seed": 0, "target_macs": 0.25, "status": "error", "session": "a"},
        {"label": "l1", "seed": 1, "target_macs": 0.25, "status": "error"},
    ]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run.done_runs(out) == {("l1", 0.5, 0)}
    assert run.done_runs(out, "a") == {("l1", 0.5, 0), ("l1", 0.25, 0)}  # not retried in "a"
    assert run.done_runs(out, "b") == {("l1", 0.5, 0)}  # a later invocation retries it
