"""The machine a number was measured on, as data and as one line.

Why one function for every writer (run reports, benchmark pages, their JSON records): a latency
or a wall time means nothing without the machine, and five hand-made descriptions had drifted
apart (one named the CPU model, another only ``x86_64``; one counted cores, another threads), so
two pages could not be compared. Every writer now stores :func:`machine_info` and prints
:func:`describe_machine`.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

CPUINFO = "/proc/cpuinfo"


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``'s ``model name``), else what ``platform``
    knows (often only the architecture, e.g. ``x86_64``, on Linux)."""
    try:
        with open(CPUINFO) as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(packages: Sequence[str] = ()) -> dict[str, Any]:
    """Where the current process runs: host, CPU, threads, accelerator and software versions.

    Args:
        packages: distribution names whose versions matter for the numbers beyond torch
            (``"torchvision"``, ``"torch-pruning"``); an absent one is recorded as
            ``"not installed"`` rather than failing a benchmark after its measurements.

    Returns:
        A JSON-ready dict: ``host``, ``cpu``, ``cpus`` (logical CPUs), ``threads`` (torch
        threads now), ``accelerator`` (CUDA device name or ``"no GPU"``), ``mkldnn`` (oneDNN
        available: it decides which CPU kernels run), ``python``, ``torch`` and ``packages``
        (``{name: version}``).

    Example::

        record["machine"] = machine_info(["torchvision"])
    """
    versions = {}
    for name in packages:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "host": platform.node() or "unknown host",
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU",
        "mkldnn": torch.backends.mkldnn.is_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "packages": versions,
    }


def describe_machine(info: Mapping[str, Any] | None = None) -> str:
    """One line naming the hardware and software a run's numbers (latency above all) came from.

    Args:
        info: a :func:`machine_info` dict, e.g. one stored in a benchmark's JSON and rendered
            later on another machine; default: the current machine. Fields a stored dict lacks
            (it may come from an older regprune) are left out of the line, not invented.

    Example::

        describe_machine()
        # 'box: AMD EPYC 7B13, 2 CPUs, 1 torch threads, no GPU; Python 3.12.3, torch 2.6.0,
        #  oneDNN on'
    """
    info = machine_info() if info is None else info
    hardware = [
        f"{info['cpus']} CPUs" if "cpus" in info else None,
        f"{info['threads']} torch threads" if "threads" in info else None,
        info.get("accelerator"),
    ]
    software = [
        f"Python {info['python']}" if "python" in info else None,
        f"torch {info['torch']}" if "torch" in info else None,
        f"oneDNN {'on' if info['mkldnn'] else 'off'}" if "mkldnn" in info else None,
        *(f"{name} {number}" for name, number in (info.get("packages") or {}).items()),
    ]
    cpu = ", ".join(str(part) for part in [info.get("cpu", "unknown CPU"), *hardware] if part)
    line = f"{info['host']}: {cpu}" if "host" in info else cpu
    if software := [part for part in software if part]:
        line += "; " + ", ".join(software)
    return line
