"""The ``regprune`` command line: help, model tools, and one-line errors for bad input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from regprune import count, load_pruned
from regprune.cli import build_parser, main
from regprune.models import create_model
from tests.pipeline.tiny_run import needs_fashion_mnist, tiny_config, write_config

SUBCOMMANDS = ("run", "train", "sparsify", "prune", "finetune", "eval", "report", "count",
               "prune-model")  # fmt: skip


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("regprune: error: ")
    return lines[0]


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])

    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for name in SUBCOMMANDS:
        assert f"    {name} " in out or f"    {name}\n" in out, name


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_its_own_help(capsys, name):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])

    assert exit_info.value.code == 0
    assert f"usage: regprune {name}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "quiet"),
    [(["-q", "run", "c.yaml"], True), (["run", "c.yaml", "-q"], True), (["run", "c.yaml"], False)],
)
def test_global_flags_work_before_and_after_the_subcommand(argv, quiet):
    args = build_parser().parse_args(argv)

    assert (args.quiet, args.debug, args.config) == (quiet, False, "c.yaml")


def test_count_prints_a_table_with_macs_and_flops(capsys):
    assert main(["count", "lenet5", "--input-size", "1", "28", "28"]) == 0

    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert {"layer", "MACs", "FLOPs", "params"} <= set(header)
    assert "features.0" in out and "total" in out
    assert "FLOPs" in out.splitlines()[-1] and "(2 x MACs)" in out


def _count_rows(capsys, *argv: str) -> dict[str, str]:
    """``regprune count``'s layer rows as {layer name: layer type}, and its total row."""
    assert main(["count", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    first, last = (i for i, line in enumerate(lines) if line and set(line) == {"-"})
    rows = dict(line.split()[:2] for line in lines[first + 1 : last])
    rows["total"] = lines[last + 1]
    return rows


def test_count_passes_architecture_options(capsys):
    argv = ("resnet20", "--input-size", "1", "28", "28", "--arg")
    option_a = _count_rows(capsys, *argv, "shortcut=A")
    option_b = _count_rows(capsys, *argv, "shortcut=B")

    # the two stage boundaries: A pads with zeros (no layer), B projects with a 1x1 conv + BN
    for block in ("layer2.0", "layer3.0"):
        assert option_a[f"{block}.shortcut"] == "PadShortcut"
        assert f"{block}.shortcut.0" not in option_a
        assert option_b[f"{block}.shortcut.0"] == "Conv2d"
        assert option_b[f"{block}.shortcut.1"] == "BatchNorm2d"
    assert option_a["total"] != option_b["total"]


def test_prune_model_prints_widths_and_macs_before_and_after(capsys, tmp_path):
    saved = tmp_path / "small.pt"
    argv = ["prune-model", "resnet20", "--target-macs", "0.5", "--input-size", "1", "28", "28"]
    code = main([*argv, "--save", str(saved)])

    out = capsys.readouterr().out
    assert code == 0
    assert "width before" in out and "width after" in out and "MACs after" in out
    assert "% kept" in out
    printed = float(re.search(r"\(([\d.]+)% kept\)", out).group(1))
    # the budget contract: never above the target, at most 1% of it below
    original = create_model("resnet20", num_classes=10, in_channels=1)
    small = load_pruned(create_model("resnet20", num_classes=10, in_channels=1), saved)
    x = torch.zeros(1, 1, 28, 28)
    kept = count(small, x).macs / count(original, x).macs
    assert 0.5 * 0.99 <= kept <= 0.5
    assert printed == round(100 * kept, 1)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["count", "resnet21"], "unknown model 'resnet21'"),
        (["prune-model", "lenet5", "--ratio", "1.5"], "ratio"),
        (["prune-model", "lenet5", "--ratio", "0.5", "--round-to", "0"], "or 'auto'"),
        (["count", "lenet5", "--input-size", "0", "28", "28"], "--input-size must be positive"),
        (["count", "lenet5", "--arg", "padding"], "not KEY=VALUE"),
    ],
)
def test_model_tools_report_bad_input_in_one_line(capsys, argv, expected):
    assert main(argv) == 2
    assert expected in _error_line(capsys)


def test_a_bad_config_key_is_one_line_naming_the_key_and_the_allowed_ones(capsys, tmp_path):
    data = tiny_config(tmp_path / "run")
    data["finetune"]["epoch"] = 3
    config = write_config(tmp_path / "bad.yaml", data)

    assert main(["run", str(config)]) == 2
    line = _error_line(capsys)
    assert "bad.yaml: unknown key 'epoch' in section 'finetune' (did you mean 'epochs'?)" in line
    assert "allowed keys: epochs, lr, optimizer, momentum" in line
    assert not (tmp_path / "run").exists()


def test_a_wrong_type_from_an_override_is_one_line(capsys, tmp_path):
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run"))

    assert main(["run", str(config), "--resume", "data.batch_size=big"]) == 2
    assert "data.batch_size: expected int, got 'big' (str)" in _error_line(capsys)


def test_a_missing_config_file_and_a_malformed_override_are_one_line(capsys, tmp_path):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in _error_line(capsys)
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run"))
    assert main(["run", str(config), "finetune.epochs"]) == 2
    assert "override 'finetune.epochs' is not KEY=VALUE" in _error_line(capsys)
    with pytest.raises(SystemExit):
        main(["run", str(config), "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_a_missing_data_set_is_one_line_saying_where_we_looked(capsys, tmp_path):
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run"))

    code = main(["run", str(config), "data.name=cifar10", f"data.root={tmp_path / 'none'}"])

    assert code == 1
    line = _error_line(capsys)
    assert "CIFAR-10 not found. Looked in:" in line and str(tmp_path / "none") in line


def test_a_run_dir_given_on_the_command_line_may_use_dot_dot(capsys, tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    data = tiny_config(tmp_path / "unused")
    data["data"]["name"] = "cifar10"  # fails after the run dir is accepted, before writing
    data["data"]["root"] = str(tmp_path / "none")
    config = write_config(tmp_path / "c.yaml", data)

    assert main(["run", str(config), "--run-dir", "../run"]) == 1
    assert "CIFAR-10 not found" in _error_line(capsys)
    data["output"]["run_dir"] = "../run"
    write_config(tmp_path / "c.yaml", data)
    assert main(["run", str(config)]) == 2
    assert "output.run_dir: must not contain '..'" in _error_line(capsys)


def test_report_and_eval_of_a_directory_without_a_run(capsys, tmp_path):
    assert main(["report", str(tmp_path / "none")]) == 1
    assert "no run directory" in _error_line(capsys)
    assert main(["eval", str(tmp_path)]) == 1
    assert "without config.yaml" in _error_line(capsys)


@needs_fashion_mnist
def test_phase_commands_eval_and_report_on_a_run_directory(capsys, tmp_path):
    data = tiny_config(tmp_path / "run")
    data["method"] = {"name": "oneshot", "ratio": 0.5}
    data["sparsify"] = {"epochs": 0}
    data["model"] = {"name": "lenet5"}
    config = write_config(tmp_path / "c.yaml", data)
    run_dir = str(tmp_path / "run")

    assert main(["-q", "train", str(config)]) == 0
    assert capsys.readouterr().out == f"Run directory: {run_dir}\n"
    assert main(["-q", "eval", run_dir]) == 0
    assert capsys.readouterr().out.startswith("pretrained model, test set: loss")
    assert main(["-q", "prune", run_dir]) == 1  # sparsify is not done yet
    assert "needs the results of sparsify" in _error_line(capsys)
    for name in ("sparsify", "prune", "finetune"):
        assert main(["-q", name, run_dir]) == 0
    assert main(["-q", "eval", run_dir, "--split", "val"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("finetuned model, val set")
    assert main(["-q", "report", run_dir, "--measure"]) == 0
    assert main(["-q", "report", run_dir]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"Report: {run_dir}/report.md"
    summary = (Path(run_dir) / "summary.json").read_text()
    assert "regprune -q train" in summary and "regprune -q finetune" in summary


def test_python_dash_m_runs_the_same_cli():
    result = subprocess.run(
        [sys.executable, "-m", "regprune", "count", "lenet5", "--input-size", "1", "28", "28"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )

    assert result.returncode == 0, result.stderr
    assert "FLOPs" in result.stdout
