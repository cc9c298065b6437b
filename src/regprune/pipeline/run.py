"""Run phases in order, skip the completed ones, resume the interrupted one.

A run directory's ``progress.json`` lists the completed phases; they always form a prefix of
pretrain -> sparsify -> prune -> finetune -> report. So resuming is: skip that prefix, continue
the next phase from its checkpoint (the trainer restores model, optimizer, schedule, method state
and RNG), then run the rest. Re-running one phase (``regprune finetune ...``) first discards its
results and those of every later phase, so the prefix property holds.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from regprune.pipeline.config import (
    PHASE_SECTIONS,
    ConfigError,
    RunConfig,
    changed_keys,
    dump_config,
    load_config,
)
from regprune.pipeline.context import PHASES, RunContext, logger
from regprune.pipeline.phases import PHASE_FUNCTIONS
from regprune.pipeline.rundir import (
    CONFIG_FILE,
    FINETUNED_FILE,
    METRICS_FILE,
    PLAN_FILE,
    PLOTS_DIR,
    PRUNED_FILE,
    REPORT_FILE,
    SPARSITY_DIR,
    SUMMARY_FILE,
    Progress,
    RunDir,
    RunDirError,
)
from regprune.train import MetricsLog, barrier, is_main_process

# What each phase leaves in the run directory besides its checkpoint and metrics records.
_PHASE_FILES: dict[str, tuple[str, ...]] = {
    "pretrain": (),
    "sparsify": (SPARSITY_DIR,),
    "prune": (PRUNED_FILE, PLAN_FILE),
    "finetune": (FINETUNED_FILE,),
    "report": (SUMMARY_FILE, REPORT_FILE, PLOTS_DIR),
}


@dataclass(frozen=True)
class RunOutcome:
    """Where the run is and what it produced."""

    run_dir: RunDir
    progress: Progress
    ran: tuple[str, ...]

    @property
    def report_path(self) -> str | None:
        return self.progress.phases.get("report", {}).get("report")


def _sections(phases: Sequence[str]) -> list[str]:
    return [section for phase in phases for section in PHASE_SECTIONS[phase]]


def _started(run_dir: RunDir, progress: Progress, phase: str) -> bool:
    return progress.done(phase) or run_dir.checkpoint(phase).is_file()


def _discard(run_dir: RunDir, progress: Progress, phases: Sequence[str]) -> None:
    """Forget ``phases``: their progress entries, checkpoints, metrics records and files."""
    metrics = MetricsLog(run_dir.path(METRICS_FILE))
    for phase in phases:
        progress.phases.pop(phase, None)
        run_dir.checkpoint(phase).unlink(missing_ok=True)
        metrics.drop_after(phase, 0)
        for name in _PHASE_FILES[phase]:
            path = run_dir.path(name)
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def _check_frozen(run_dir: RunDir, config: RunConfig, frozen: Sequence[str]) -> None:
    """The settings the kept phases were run with must not change under them."""
    saved_path = run_dir.path(CONFIG_FILE)
    if not frozen or not saved_path.is_file():
        return
    saved = load_config(saved_path)
    changes = changed_keys(saved, config, _sections(frozen))
    if changes:
        raise ConfigError(
            f"{run_dir.root} was run with other settings for its phases {', '.join(frozen)}: "
            f"{'; '.join(changes)}. Use the saved config ({saved_path}) or a new run directory"
        )


def prepare_run(
    run_dir: RunDir, config: RunConfig, phases: Sequence[str], resume: bool, command: str
) -> Progress:
    """Check the run directory against the request and bring it into shape for ``phases``.

    Every rank decides on the same files before rank 0 changes anything, then all wait.

    Raises:
        RunDirError: a full run into a directory that already holds one (without ``resume``),
            or a phase whose earlier phases are not done.
        ConfigError: changed settings under phases whose results are kept.
    """
    first = phases[0]
    exists = run_dir.has_run()
    if exists and not resume and len(phases) == len(PHASES):
        raise RunDirError(
            f"{run_dir.root} already holds a run; pass --resume to continue it, or choose "
            "another run directory (--run-dir or output.run_dir)"
        )
    if not exists and run_dir.root.is_dir() and any(run_dir.root.iterdir()):
        raise RunDirError(f"{run_dir.root} is not empty and holds no run; choose another")
    progress = run_dir.read_progress() if exists else Progress(command=command)
    missing = [p for p in PHASES[: PHASES.index(first)] if not progress.done(p)]
    if missing:
        raise RunDirError(
            f"phase {first} needs the results of {', '.join(missing)} in {run_dir.root}; "
            f"run those first (regprune run, or the single-phase commands)"
        )
    if resume:
        kept = [p for p in PHASES if _started(run_dir, progress, p)]
    else:
        kept = list(PHASES[: PHASES.index(first)])
    # Not-started phases are cleared too: a kill before a phase's first checkpoint can leave a
    # stray file (its epoch-0 snapshot) that the phase, maybe with other settings, would not
    # overwrite.
    discarded = [p for p in PHASES if p not in kept]
    _check_frozen(run_dir, config, kept)
    redone = [p for p in discarded if _started(run_dir, progress, p)]
    if redone and is_main_process():
        logger.warning("[%s] running again: discarding the results of %s", first, ", ".join(redone))
    barrier()
    if is_main_process():
        _discard(run_dir, progress, discarded)
        run_dir.write_progress(progress)
        run_dir.write_text(CONFIG_FILE, dump_config(config))
    barrier()
    return progress


def run_pipeline(
    config: RunConfig,
    *,
    phases: Sequence[str] | None = None,
    resume: bool = False,
    command: str = "",
) -> RunOutcome:
    """Run ``phases`` (default: all five) of ``config`` in its run directory.

    Args:
        config: the resolved run config; ``config.output.run_dir`` is where everything goes.
        phases: consecutive phases to run; the phases before them must be done already.
        resume: continue: completed phases are skipped and an interrupted phase continues from
            its last checkpoint, ending exactly where an uninterrupted run would (CPU, same
            seed). Without it a full run needs a fresh directory, and a phase command runs
            its phase again from the start, discarding the results of the later phases.
        command: the command line, recorded for the report.

    Returns:
        A :class:`RunOutcome`.

    Raises:
        RunDirError, ConfigError: see :func:`prepare_run`; plus whatever a phase raises
            (``DatasetNotFoundError``, ``CheckpointError`` ...).

    Example:
        >>> outcome = run_pipeline(load_config("configs/quickstart.yaml"))  # doctest: +SKIP
        >>> outcome.report_path  # doctest: +SKIP
        '/.../runs/quickstart/report.md'
    """
    selected = tuple(phases or PHASES)
    unknown = [p for p in selected if p not in PHASES]
    if unknown or list(selected) != list(PHASES[PHASES.index(selected[0]) :][: len(selected)]):
        raise ValueError(f"phases must be consecutive names from {PHASES}, got {list(selected)}")
    run_dir = RunDir(config.output.run_dir)
    ctx = RunContext(config, run_dir, command)
    ctx.preflight(selected)
    progress = prepare_run(run_dir, config, selected, resume, command)
    ran = []
    for phase in selected:
        if progress.done(phase):
            logger.info("[%s] done already, skipped", phase)
            continue
        logger.info("[%s] starting", phase)
        start = time.perf_counter()
        result: dict[str, Any] = PHASE_FUNCTIONS[phase](ctx, progress)
        earlier_s = float(result.pop("earlier_s", 0.0))
        result["time_s"] = time.perf_counter() - start + earlier_s
        result["command"] = command
        progress.phases[phase] = result
        if ctx.main:
            run_dir.write_progress(progress)
        logger.info("[%s] done in %.1f s", phase, result["time_s"])
        ran.append(phase)
    return RunOutcome(run_dir, progress, tuple(ran))
