"""``torchrun --nproc_per_node=2 -m regprune run``: two gloo processes on the CPU, one report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from regprune.report import RunSummary, read_metrics
from tests.pipeline.tiny_run import needs_fashion_mnist, tiny_config, write_config

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))


@needs_fashion_mnist
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed next to this Python")
def test_two_process_gloo_run_completes_and_rank0_writes_the_report(tmp_path):
    data = tiny_config(tmp_path / "run")
    data["sparsify"]["epochs"] = 1
    data["finetune"]["epochs"] = 1
    config = write_config(tmp_path / "c.yaml", data)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}

    result = subprocess.run(
        [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "regprune", "run", str(config)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "run"
    report = run_dir / "report.md"
    assert report.is_file()
    # Only rank 0 prints and logs; both ranks would otherwise repeat every line.
    assert result.stdout.splitlines()[-1] == f"Report: {report}"
    assert result.stdout.count("Test accuracy:") == 1
    assert result.stderr.count("[finetune] done") == 1
    summary = RunSummary.load(run_dir)
    assert summary.command.startswith("torchrun --nproc_per_node=2 -m regprune run ")
    assert summary.macs_after < summary.macs_before
    assert [r["phase"] for r in read_metrics(run_dir)] == ["pretrain", "sparsify", "finetune"]
    progress = json.loads((run_dir / "progress.json").read_text())
    assert list(progress["phases"]) == ["pretrain", "sparsify", "prune", "finetune", "report"]
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert sorted(leftovers) == ["c.yaml", "run"]
