"""The one machine description: what it records, and the line it prints from a stored record."""

from __future__ import annotations

import json
import os

import torch

import regprune.report.machine as machine
from regprune.report import describe_machine, machine_info


def test_machine_info_records_this_process_and_survives_json() -> None:
    info = machine_info(["torch", "no-such-distribution-xyz"])

    assert info["cpus"] == os.cpu_count()
    assert info["threads"] == torch.get_num_threads()
    assert info["torch"] == torch.__version__
    assert info["packages"]["no-such-distribution-xyz"] == "not installed"
    assert info["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert json.loads(json.dumps(info)) == info  # stored in benchmark records as is


def test_the_line_is_built_from_the_stored_record_not_the_current_machine() -> None:
    stored = {
        "host": "lab-7",
        "cpu": "Some CPU 9000",
        "cpus": 64,
        "threads": 8,
        "accelerator": "no GPU",
        "mkldnn": False,
        "python": "3.10.1",
        "torch": "2.0.0",
        "packages": {"torchvision": "0.15.0"},
    }

    line = describe_machine(stored)

    assert line == (
        "lab-7: Some CPU 9000, 64 CPUs, 8 torch threads, no GPU; Python 3.10.1, torch 2.0.0, "
        "oneDNN off, torchvision 0.15.0"
    )


def test_a_record_from_an_older_writer_prints_what_it_has() -> None:
    assert describe_machine({"cpu": "AMD EPYC", "torch": "2.1"}) == "AMD EPYC; torch 2.1"


def test_default_line_describes_the_current_machine() -> None:
    assert describe_machine() == describe_machine(machine_info())
    assert f"{os.cpu_count()} CPUs" in describe_machine()


def test_cpu_model_falls_back_to_platform_without_cpuinfo(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(machine, "CPUINFO", str(tmp_path / "absent"))
    assert machine.cpu_model()  # the architecture at least, never an empty name
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Test CPU @ 3GHz\n")
    monkeypatch.setattr(machine, "CPUINFO", str(tmp_path / "cpuinfo"))
    assert machine.cpu_model() == "Test CPU @ 3GHz"
