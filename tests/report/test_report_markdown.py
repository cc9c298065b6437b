"""write_report on a real run directory: files, valid plots, the numbers that went in."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from regprune.metrics import format_count
from regprune.report import write_report
from tests.report.fake_run import make_summary, write_run

PLOTS = ("accuracy_vs_macs", "sparsity_histograms", "training_curves", "layer_widths")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_real_png(path: Path) -> None:
    """A PNG file with a picture in it: right signature, sensible size, not one flat colour."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    height, width = pixels.shape[:2]
    assert height >= 300 and width >= 500, (path.name, pixels.shape)
    assert pixels[..., :3].std() > 0.05, f"{path.name} is (almost) blank"


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One report shared by the tests that only read it (rendering plots takes seconds)."""
    run_dir = write_run(tmp_path_factory.mktemp("report") / "run")
    report = write_report(run_dir)
    assert report == run_dir / "report.md"
    return run_dir, report.read_text()


def test_writes_report_and_valid_plots(written: tuple[Path, str]) -> None:
    run_dir, text = written
    for name in PLOTS:
        png = run_dir / "plots" / f"{name}.png"
        assert_real_png(png)
        assert f"](plots/{name}.png)" in text  # embedded with a path relative to the report
    assert not list(run_dir.glob(".*.tmp"))


def test_report_contains_the_numbers_put_in(written: tuple[Path, str]) -> None:
    summary = make_summary()
    _, text = written
    assert summary.command in text
    assert summary.machine in text
    assert "| accuracy | 91.23 % | 45.67 % | 90.87 % |" in text
    assert f"| MACs | {format_count(40_812_544)} | {format_count(20_406_272)} | 50.0 % |" in text
    assert format_count(40_812_544) == "40.81 M"
    flops_row = f"| FLOPs (2 x MACs) | {format_count(2 * 40_812_544)} | "
    assert flops_row + f"{format_count(2 * 20_406_272)} | 50.0 % |" in text
    assert "| params | 269.72 K | 70.14 K | 74.0 % |" in text
    # batch 64: 80 ms -> 50 ms is 1.60x of a 2.00x MACs ratio
    assert "| 64 | 80.000 | 50.000 | 1.60x | 2.00x | 0.80 |" in text
    assert "| 1 | 2.500 | 1.250 | 2.00x | 2.00x | 1.00 |" in text
    assert "| layer1.0.conv1 | 16 | 4 | 25.0 % |" in text
    assert "sparsify 6.7 min" in text and "finetune 2.5 h" in text
    assert "remove 50.0 % of the channels" in text


def test_training_table_takes_last_epoch_of_each_phase(written: tuple[Path, str]) -> None:
    _, text = written
    # finetune ends at step 10: train_loss 0.2, train_acc 0.9, val_acc 0.88, 3 epochs
    assert "| finetune | 3 | 0.2000 | 90.00 % | 0.2200 | 88.00 % | 2.5 h |" in text
    assert "| pretrain | 3 |" in text and "| sparsify | 4 |" in text


def test_sparsity_section_compares_first_and_last_snapshot(written: tuple[Path, str]) -> None:
    _, text = written
    assert "4 snapshots" in text
    assert "| epoch 1 | 40 |" in text and "| epoch 4 | 40 |" in text


def test_rewrite_replaces_report_and_shows_mean_and_std_over_seeds(run_dir: Path) -> None:
    assert "| accuracy | 91.23 % |" in write_report(run_dir).read_text()
    make_summary(
        seeds=[0, 1],
        acc_before_prune=[0.91, 0.93],
        acc_after_prune=[0.40, 0.50],
        acc_after_finetune=[0.90, 0.92],
    ).save(run_dir)
    text = write_report(run_dir).read_text()
    std = 100 * float(np.std([0.91, 0.93], ddof=1))
    assert f"| accuracy | 92.00 ± {std:.2f} % (n=2) |" in text
    assert "91.23" not in text
    assert "Seeds: 0, 1" in text


def test_run_without_snapshots_says_so(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", snapshots=False)
    text = write_report(run_dir).read_text()
    assert "No sparsity snapshots in `sparsity/`" in text
    assert not (run_dir / "plots" / "sparsity_histograms.png").exists()


def test_missing_metrics_names_the_path(run_dir: Path) -> None:
    (run_dir / "metrics.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=str(run_dir / "metrics.jsonl")):
        write_report(run_dir)
    assert not (run_dir / "report.md").exists()


def test_missing_summary_names_the_path(run_dir: Path) -> None:
    (run_dir / "summary.json").unlink()
    with pytest.raises(FileNotFoundError, match=str(run_dir / "summary.json")):
        write_report(run_dir)


def test_broken_metrics_line_names_file_and_line(run_dir: Path) -> None:
    with open(run_dir / "metrics.jsonl", "a") as file:
        file.write('{"phase": "finetune", "epoch": \n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:11 is not valid JSON"):
        write_report(run_dir)


def test_a_summary_with_a_baseline_accuracy_shows_it_first(run_dir: Path) -> None:
    make_summary(acc_baseline=[0.95]).save(run_dir)
    text = write_report(run_dir).read_text()
    assert "|  | baseline (pretrained) | before pruning |" in text
    assert "| accuracy | 95.00 % | 91.23 % |" in text


def test_the_layout_each_latency_was_measured_in_is_shown(run_dir: Path) -> None:
    layouts = {
        "before": {1: "contiguous", 64: "contiguous"},
        "after": {1: "contiguous", 64: "channels_last"},
    }
    make_summary(latency_layouts=layouts).save(run_dir)
    text = write_report(run_dir).read_text()
    assert "| 64 | 80.000 | 50.000 | 1.60x | 2.00x | 0.80 | contiguous / channels_last |" in text
    assert "each is shown in its faster one" in text
