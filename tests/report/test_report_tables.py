"""Tables (Markdown, console, per-layer CLI view) and layer widths of a really pruned model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import regprune
from regprune.metrics import format_count
from regprune.report import (
    console_table,
    layer_console_table,
    layer_widths,
    markdown_table,
    width_changes,
)
from regprune.report.tables import percent, reduction

X = torch.randn(1, 1, 8, 8)


def tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


@pytest.fixture(scope="module")
def models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = tiny()
    return model, regprune.prune(model, X, ratio=0.5)


def test_markdown_table_aligns_and_escapes_pipes() -> None:
    table = markdown_table(["layer", "width"], [["a|b", "16"]])
    assert table.splitlines() == ["| layer | width |", "|---|---:|", "| a\\|b | 16 |"]
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 columns"):
        markdown_table(["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="'l' or 'r'"):
        markdown_table(["a"], [["x"]], align=["c"])


def test_console_table_rules_off_the_total_row() -> None:
    lines = console_table(["name", "n"], [["a", "1"], ["bbb", "100"], ["total", "101"]]).split("\n")
    assert lines == [
        "name     n",
        "----------",
        "a        1",
        "bbb    100",
        "----------",
        "total  101",
    ]


def test_percent_and_reduction() -> None:
    assert percent(0.91234) == "91.23 %"
    assert reduction(100, 40) == "60.0 %"
    assert reduction(100, 120) == "-20.0 %"
    assert reduction(0, 5) == "n/a"


def test_layer_widths_before_and_after_pruning(models: tuple[nn.Module, nn.Module]) -> None:
    model, small = models
    assert layer_widths(model) == {"0": 8, "3": 16, "7": 10}
    assert width_changes(model, small) == {"0": (8, 4), "3": (16, 8), "7": (10, 10)}
    with pytest.raises(ValueError, match="only in the original: \\['3'"):
        width_changes(model, nn.Sequential(nn.Conv2d(1, 8, 3)))


def test_console_table_of_one_model_lists_layers_with_width_or_macs(
    models: tuple[nn.Module, nn.Module],
) -> None:
    model, _ = models
    cost = regprune.count(model, X, per_layer=True)
    lines = layer_console_table(cost, layer_widths(model)).splitlines()
    assert lines[0].split() == ["layer", "type", "width", "MACs"]
    assert [line.split()[0] for line in lines[2:5]] == ["0", "3", "7"]  # no BN, ReLU, pool
    assert lines[2].split() == ["0", "Conv2d", "8", "4.61", "K"]  # 8*8 outputs * 8 * 9
    assert lines[-1].split() == ["total", "78.50", "K"]


def test_console_table_before_and_after(models: tuple[nn.Module, nn.Module]) -> None:
    model, small = models
    cost, small_cost = regprune.count(model, X, per_layer=True), regprune.count(small, X, True)
    text = layer_console_table(cost, layer_widths(model), small_cost, layer_widths(small))
    rows = {line.split()[0]: line.split() for line in text.splitlines()[2:]}
    assert rows["3"] == ["3", "Conv2d", "16", "8", "73.73", "K", "18.43", "K"]
    assert rows["total"][-2:] == format_count(small_cost.macs).split()


def test_console_table_needs_per_layer_counts(models: tuple[nn.Module, nn.Module]) -> None:
    model, _ = models
    with pytest.raises(ValueError, match="per_layer=True"):
        layer_console_table(regprune.count(model, X), layer_widths(model))
    with pytest.raises(ValueError, match="together"):
        layer_console_table(regprune.count(model, X, per_layer=True), {}, pruned_widths={})
