"""One benchmark measurement per fresh interpreter: the worker side and the parent side.

Why subprocesses: a model that hangs, leaks memory or crashes must cost one row, not the run,
and timings must not inherit another model's allocator state. A worker prints each result as
one prefixed JSON line; the parent keeps every line it got, whatever happened after.
"""

from __future__ import annotations

import json
import subprocess
import traceback
from collections.abc import Callable, Sequence
from typing import Any

RESULT_PREFIX = "BENCH_RESULT "


def emit(row: dict[str, Any]) -> None:
    """Hand one result to the parent (flushed at once: a later crash must not lose it)."""
    print(RESULT_PREFIX + json.dumps(row), flush=True)


def measure(produce: Callable[..., dict[str, Any]], *args: Any, limit: int = 300) -> dict[str, Any]:
    """``produce(*args)``, or a FAIL row naming the exception: the table must show failures."""
    try:
        return produce(*args)
    except Exception as error:
        traceback.print_exc()
        return {"status": f"FAIL: {type(error).__name__}: {error}"[:limit]}


def run_worker(
    command: Sequence[str], timeout_s: float, **popen: Any
) -> tuple[list[dict[str, Any]], str, str]:
    """Run a worker; return the rows it emitted, how it ended, and the tail of its stderr.

    ``ended`` is ``"exit code N"`` or ``"timed out after N s"``; rows printed before a timeout
    or a crash are kept.
    """
    try:
        done = subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout_s, **popen
        )
        stdout, stderr, ended = done.stdout, done.stderr, f"exit code {done.returncode}"
    except subprocess.TimeoutExpired as expired:
        stdout = expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout
        stderr = expired.stderr.decode() if isinstance(expired.stderr, bytes) else expired.stderr
        ended = f"timed out after {timeout_s:.0f} s"
    rows = [
        json.loads(line[len(RESULT_PREFIX) :])
        for line in (stdout or "").splitlines()
        if line.startswith(RESULT_PREFIX)
    ]
    return rows, ended, (stderr or "")[-1500:]
