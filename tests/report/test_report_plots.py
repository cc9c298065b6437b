"""Plot functions: plain data in, a valid PNG out, no pyplot state, bad data refused."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from regprune.report import plots
from tests.report.fake_run import metrics_records


def image(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path)


def test_training_curves_leave_no_pyplot_figures(tmp_path: Path) -> None:
    before = plt.get_fignums()
    path = plots.training_curves(metrics_records(), tmp_path / "sub" / "curves.png")
    assert path == tmp_path / "sub" / "curves.png"  # parent folder created
    height, width, _ = image(path).shape
    assert (height, width) == (int(4.2 * plots.DPI), 10 * plots.DPI)
    assert plt.get_fignums() == before


def test_training_curves_need_records_with_epochs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no metrics records"):
        plots.training_curves([], tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"records \[1\] have no 'epoch'"):
        plots.training_curves([{"epoch": 1, "train_loss": 1.0}, {"phase": "x"}], tmp_path / "a.png")


def test_histogram_axis_is_logarithmic_only_across_decades() -> None:
    assert plots._log_bins(np.array([0.5, 1.0, 2.0]), 10) is None
    edges, floor = plots._log_bins(np.array([0.0, 1e-4, 1.0]), 10)
    assert floor == pytest.approx(5e-5)  # zeros drawn just left of the smallest positive value
    assert edges[0] == pytest.approx(floor) and edges[-1] > 1.0
    assert np.allclose(np.diff(np.log(edges)), np.log(edges[1] / edges[0]))


def test_sparsity_histograms_draw_zeros_and_refuse_negatives(tmp_path: Path) -> None:
    last = np.concatenate([np.zeros(5), np.full(5, 1e-4), np.linspace(0.5, 1.5, 20)])
    path = plots.sparsity_histograms(np.linspace(0.5, 1.5, 30), last, tmp_path / "h.png")
    assert image(path).shape[:2] == (int(4.2 * plots.DPI), 7 * plots.DPI)
    with pytest.raises(ValueError, match="finite and >= 0"):
        plots.sparsity_histograms(np.array([1.0]), np.array([-1.0]), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="no values"):
        plots.sparsity_histograms(np.array([]), np.array([1.0]), tmp_path / "bad.png")


def test_width_bars_grow_with_layer_count(tmp_path: Path) -> None:
    few = image(plots.width_bars({"a": (16, 8)}, tmp_path / "few.png"))
    many_widths = {f"layer{i}.conv": (64, 64 - i) for i in range(40)}
    many = image(plots.width_bars(many_widths, tmp_path / "many.png"))
    assert many.shape[0] > 2 * few.shape[0]
    with pytest.raises(ValueError, match="no layer widths"):
        plots.width_bars({}, tmp_path / "none.png")


def test_accuracy_vs_macs_with_error_bars(tmp_path: Path) -> None:
    points = {"baseline": (4_000_000, [0.91, 0.92]), "pruned": (2_000_000, [0.89, 0.90])}
    assert image(plots.accuracy_vs_macs(points, tmp_path / "a.png")).std() > 0.05
    with pytest.raises(ValueError, match="'pruned' has no accuracies"):
        plots.accuracy_vs_macs({"pruned": (1, [])}, tmp_path / "b.png")
