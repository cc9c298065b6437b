"""``regprune`` command line: run the pipeline from a YAML config, or inspect and prune models.

Why errors are one line: a user who mistyped a key or forgot a data set needs the sentence that
says what to change, not a traceback (``--debug`` shows it when a bug is suspected).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from regprune.data import DatasetNotFoundError
from regprune.pipeline import (
    ConfigError,
    RunConfig,
    RunContext,
    RunDir,
    RunDirError,
    apply_overrides,
    config_from_dict,
    evaluate_run,
    parse_override,
    parse_yaml,
    run_pipeline,
)
from regprune.train import (
    CheckpointError,
    NonFiniteLossError,
    cleanup,
    init_distributed,
    is_main_process,
)

if TYPE_CHECKING:
    from regprune.report import RunSummary

logger = logging.getLogger("regprune.cli")

# Phase subcommands and the phase each runs ("train" trains the baseline).
PHASE_COMMANDS = {"train": "pretrain", "sparsify": "sparsify", "prune": "prune",
                  "finetune": "finetune"}  # fmt: skip
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    RunDirError,
    DatasetNotFoundError,
    CheckpointError,
    FileNotFoundError,
    NonFiniteLossError,
)
"""Errors caused by the input (config, files, data), reported as one line without traceback."""

EXAMPLES = """\
examples:
  regprune run configs/quickstart.yaml
  regprune run configs/masksparsity.yaml method.kwargs.s=2e-4 finetune.epochs=3 --run-dir runs/s2
  regprune run runs/s2/config.yaml --resume          # continue a killed run
  torchrun --nproc_per_node=2 -m regprune run configs/quickstart.yaml
  regprune finetune runs/s2 finetune.epochs=10       # redo one phase of an existing run
  regprune eval runs/s2
  regprune report runs/s2
  regprune count resnet20 --input-size 1 28 28
  regprune prune-model resnet56 --target-macs 0.5 --input-size 3 32 32
"""


class UsageError(Exception):
    """Bad command-line arguments that argparse cannot see (overrides, input sizes)."""


def _one_line(message: str) -> str:
    """Join a multi-line message (data sets list the folders they searched) into one line."""
    lines = [line.strip().removeprefix("- ") for line in str(message).splitlines() if line.strip()]
    return " ".join(lines) if lines else message


def _command_line(prog: str, argv: Sequence[str]) -> str:
    """The command that reproduces the run: ``--resume`` dropped, torchrun restored."""
    args = [a for a in argv if a != "--resume"]
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        return shlex.join(["torchrun", f"--nproc_per_node={world_size}", "-m", "regprune", *args])
    return shlex.join([*shlex.split(prog), *args])


def _load_run_config(config: str, overrides: Sequence[str], run_dir: str | None) -> RunConfig:
    """The config in ``config`` (a YAML file, or a run directory's ``config.yaml``), with the
    overrides and ``--run-dir`` applied; a run directory given as ``config`` is the run dir."""
    source = Path(config)
    if source.is_dir():
        run_dir = run_dir or str(source)
        source = source / "config.yaml"
        if not source.is_file():
            raise RunDirError(f"{config} is a directory without config.yaml (not a run)")
    if not source.is_file():
        raise ConfigError(f"config file {str(source)!r} does not exist")
    try:
        data = parse_yaml(source.read_text())
        data = apply_overrides(data, overrides)
        if run_dir is not None:
            data.setdefault("output", {})
            if not isinstance(data["output"], dict):
                raise ConfigError("output: expected a mapping of keys")
            # A path typed on the command line is the user's own choice (``..`` included); the
            # config check against ``..`` is for run_dir values inside shared config files.
            data["output"]["run_dir"] = str(Path(run_dir).expanduser().resolve())
        return config_from_dict(data)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def _run(
    args: argparse.Namespace, phases: Sequence[str] | None, config: RunConfig | None = None
) -> int:
    config = config or _load_run_config(args.config, args.overrides, args.run_dir)
    outcome = run_pipeline(config, phases=phases, resume=args.resume, command=args.command)
    if not is_main_process():
        return 0
    if outcome.report_path and (phases is None or "report" in phases):
        _print_results(outcome.run_dir.root)
        print(f"Report: {outcome.report_path}")
    else:
        print(f"Run directory: {outcome.run_dir.root}")
    return 0


def _print_results(run_dir: Path) -> None:
    """The headline numbers, so a finished run says how it went without opening the report."""
    from regprune.metrics import format_count
    from regprune.report import RunSummary

    summary = RunSummary.load(run_dir)
    before, after, tuned = (
        summary.acc_before_prune[0],
        summary.acc_after_prune[0],
        summary.acc_after_finetune[0],
    )
    baseline = (
        f"{summary.acc_baseline[0]:.2%} baseline, " if summary.acc_baseline is not None else ""
    )
    print(
        f"Test accuracy: {baseline}{before:.2%} before pruning, {after:.2%} right after, "
        f"{tuned:.2%} after fine-tuning"
    )
    kept = summary.macs_after / summary.macs_before if summary.macs_before else 1.0
    print(
        f"MACs: {format_count(summary.macs_before)} -> {format_count(summary.macs_after)} "
        f"({kept:.1%} kept); params: {format_count(summary.params_before)} -> "
        f"{format_count(summary.params_after)}"
    )
    for batch in sorted(summary.latency_ms_before):
        print(
            f"Latency at batch {batch} (eager PyTorch): "
            f"{summary.latency_ms_before[batch]:.2f} ms -> "
            f"{summary.latency_ms_after[batch]:.2f} ms ({summary.speedup(batch):.2f}x)"
            + _layouts(summary, batch)
        )


def _layouts(summary: RunSummary, batch: int) -> str:
    """``, channels_last / contiguous``: the memory layout each model was timed in, if known."""
    layouts = summary.latency_layouts
    if not layouts:
        return ""
    return f", {layouts['before'][batch]} / {layouts['after'][batch]}"


def cmd_run(args: argparse.Namespace) -> int:
    return _run(args, None)


def cmd_phase(args: argparse.Namespace) -> int:
    return _run(args, [PHASE_COMMANDS[args.command_name]])


def cmd_eval(args: argparse.Namespace) -> int:
    config = _load_run_config(args.config, args.overrides, args.run_dir)
    ctx = RunContext(config, RunDir(config.output.run_dir), args.command)
    stage, metrics = evaluate_run(ctx, args.split)
    print(f"{stage} model, {args.split} set: loss {metrics['loss']:.4f}  acc {metrics['acc']:.2%}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from regprune.report import write_report

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"no run directory at {run_dir}")
    if args.measure:
        args.resume = False
        return _run(args, ["report"], _load_run_config(str(run_dir), [], None))
    print(f"Report: {write_report(run_dir)}")
    return 0


def _model_from_args(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor]:
    from regprune.models import create_model

    kwargs = {}
    for text in args.arg:
        path, value = parse_override(text)
        if len(path) != 1:
            raise UsageError(f"--arg {text!r}: give KEY=VALUE with a plain key")
        kwargs[path[0]] = value
    channels, height, width = args.input_size
    if min(args.input_size) < 1:
        raise UsageError(f"--input-size must be positive, got {args.input_size}")
    try:
        model = create_model(
            args.model, num_classes=args.num_classes, in_channels=channels, **kwargs
        )
    except KeyError as error:
        raise UsageError(error.args[0]) from None
    except (TypeError, ValueError) as error:
        raise UsageError(f"model {args.model!r}: {error}") from None
    return model.eval(), torch.zeros(1, channels, height, width)


def cmd_count(args: argparse.Namespace) -> int:
    from regprune.metrics import count, format_count

    model, inputs = _model_from_args(args)
    cost = count(model, inputs, per_layer=True)
    print(cost.table())
    print(
        f"\n{args.model} on one {'x'.join(map(str, args.input_size))} input: "
        f"MACs {format_count(cost.macs)}, FLOPs {format_count(cost.flops)} (2 x MACs), "
        f"params {format_count(cost.params)}"
    )
    return 0


def cmd_prune_model(args: argparse.Namespace) -> int:
    from regprune.api import prune_with_result
    from regprune.metrics import count, format_count
    from regprune.report import layer_console_table, layer_widths
    from regprune.surgery import save_pruned

    model, inputs = _model_from_args(args)
    try:
        result = prune_with_result(
            model,
            inputs,
            ratio=args.ratio,
            target_macs=args.target_macs,
            importance=args.importance,
            scope=args.scope,
            round_to=args.round_to,
            max_ratio=args.max_ratio,
            ignore=args.ignore,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    before = count(model, inputs, per_layer=True)
    after = count(result.model, inputs, per_layer=True)
    print(layer_console_table(before, layer_widths(model), after, layer_widths(result.model)))
    kept = after.macs / before.macs if before.macs else 1.0
    print(
        f"\nMACs {format_count(before.macs)} -> {format_count(after.macs)} ({kept:.1%} kept), "
        f"params {format_count(before.params)} -> {format_count(after.params)}"
    )
    if args.save is not None:
        save_pruned(result.model, args.save)
        print(f"Pruned model: {args.save} (load with regprune.load_pruned)")
    return 0


def _round_to(text: str) -> int | str:
    """``--round-to``: a positive integer or ``auto`` (Target checks the integer's range)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'auto', got {text!r}"
        ) from None


def _add_config_args(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("config", metavar="CONFIG", help=what)
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="override a config key, e.g. method.kwargs.s=1e-4 finetune.epochs=3 "
        "(the value is parsed as YAML; null, numbers, [lists] work)",
    )
    parser.add_argument(
        "--run-dir", metavar="DIR", help="write the run here (overrides output.run_dir)"
    )


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="registry name (resnet20, vgg16, "
                        "lenet5, mobilenetv2, torchvision:resnet18 ...)")  # fmt: skip
    parser.add_argument(
        "--input-size",
        nargs=3,
        type=int,
        default=[3, 32, 32],
        metavar=("C", "H", "W"),
        help="one input sample's shape (default: 3 32 32; Fashion-MNIST: 1 28 28)",
    )
    parser.add_argument("--num-classes", type=int, default=10, help="classifier outputs (10)")
    parser.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="architecture option for create_model, e.g. --arg shortcut=B (repeatable)",
    )


def build_parser(prog: str = "regprune") -> argparse.ArgumentParser:
    """The argument parser (every subcommand has its own ``--help``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Sparse-regularization pruning for PyTorch: pretrain, sparsify, prune, "
        "fine-tune and report from a YAML config; count and prune models.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    # The same flags after the subcommand; SUPPRESS keeps a subparser from resetting them.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="log warnings only")  # fmt: skip
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks of errors")  # fmt: skip
    commands = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)
    add_command = functools.partial(commands.add_parser, parents=[common])

    run = add_command(
        "run",
        help="run every phase: pretrain, sparsify, prune, finetune, report",
        description="Run the whole pipeline of a config into its run directory (config.yaml, "
        "metrics.jsonl, checkpoints/, sparsity/, pruned.pt, finetuned.pt, summary.json, "
        "report.md, plots/). Under torchrun, every rank trains and rank 0 writes.",
    )
    _add_config_args(run, "YAML run config (see configs/), or a run directory with --resume")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the run directory: completed phases are skipped, the "
        "interrupted one continues from its last checkpoint",
    )
    run.set_defaults(handler=cmd_run)

    for name, phase in PHASE_COMMANDS.items():
        sub = add_command(
            name,
            help=f"run only the {phase} phase of a run",
            description=f"Run only the {phase} phase. The phases before it must be done in the "
            "run directory; the results of later phases are discarded (they depend on this "
            "one). CONFIG may be a run directory (its config.yaml).",
        )
        _add_config_args(sub, "YAML run config, or a run directory")
        sub.add_argument(
            "--resume", action="store_true", help="continue the phase from its checkpoint"
        )
        sub.set_defaults(handler=cmd_phase)

    evaluate = add_command(
        "eval",
        help="evaluate the latest model of a run",
        description="Print loss and accuracy of the latest model in a run directory "
        "(fine-tuned, else pruned, else sparsified, else pretrained). Writes nothing.",
    )
    _add_config_args(evaluate, "YAML run config, or a run directory")
    evaluate.add_argument("--split", choices=("test", "val"), default="test", help="(test)")
    evaluate.set_defaults(handler=cmd_eval)

    report = add_command(
        "report",
        help="re-render report.md and plots/ of a run",
        description="Write RUN_DIR/report.md and RUN_DIR/plots/ again from summary.json, "
        "metrics.jsonl and sparsity/.",
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run directory")
    report.add_argument(
        "--measure",
        action="store_true",
        help="re-run the report phase first: count MACs and measure latency again",
    )
    report.set_defaults(handler=cmd_report)

    count_parser = add_command(
        "count",
        help="print MACs, FLOPs and params per layer of a model",
        description="Print a per-layer table of MACs, FLOPs (= 2 x MACs) and parameters for "
        "one forward of one input sample.",
    )
    _add_model_args(count_parser)
    count_parser.set_defaults(handler=cmd_count)

    prune_parser = add_command(
        "prune-model",
        help="one-shot prune a registry model; print widths and MACs before/after",
        description="Prune a freshly initialised registry model with one criterion and print "
        "every layer's width and MACs before and after.",
    )
    _add_model_args(prune_parser)
    target = prune_parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--ratio", type=float, help="fraction of channels to remove, in [0, 1)")
    target.add_argument("--target-macs", type=float, help="fraction of MACs to keep, in (0, 1]")
    prune_parser.add_argument(
        "--importance",
        default="l1",
        help="l1, l2, fpgm, bn_scale or random (default: l1)",
    )
    prune_parser.add_argument("--scope", choices=("local", "global"), default="local")
    prune_parser.add_argument(
        "--round-to",
        type=_round_to,
        default=None,
        help="kept widths multiple of N, or 'auto' (multiples of 8 in groups of 16 channels "
        "or more, relaxed where a MACs target needs it); default: auto with --target-macs, "
        "1 with --ratio",
    )
    prune_parser.add_argument(
        "--max-ratio",
        type=float,
        default=None,
        help="no channel group loses more than this fraction of its channels (default 0.8; "
        "1.0 for no cap)",
    )
    prune_parser.add_argument(
        "--ignore", action="append", default=[], metavar="MODULE", help="keep this module's width"
    )
    prune_parser.add_argument("--save", metavar="PATH", help="save the pruned model here")
    prune_parser.set_defaults(handler=cmd_prune_model)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse, letting ``KEY=VALUE`` overrides come after options too (``--resume a.b=1``)."""
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (tests and notebooks replace it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _configure_logging(quiet: bool) -> None:
    """INFO lines (one per epoch and phase) from the ``regprune`` loggers, on rank 0 only.

    Only the ``regprune`` logger is configured, never the root logger, so embedding
    ``main()`` (tests, notebooks) leaves the caller's logging alone.
    """
    package_logger = logging.getLogger("regprune")
    package_logger.setLevel(logging.WARNING if quiet or not is_main_process() else logging.INFO)
    if not any(isinstance(h, _StderrHandler) for h in package_logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        package_logger.addHandler(handler)


def main(argv: Sequence[str] | None = None, prog: str = "regprune") -> int:
    """Entry point of the ``regprune`` script and ``python -m regprune``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    args = _parse(parser, argv)
    args.command = _command_line(prog, argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        if distributed:
            init_distributed()
        _configure_logging(args.quiet)
        return handler(args)
    except (*USER_ERRORS, UsageError) as error:
        if args.debug:
            raise
        print(f"{prog}: error: {_one_line(str(error))}", file=sys.stderr)
        return 2 if isinstance(error, ConfigError | UsageError) else 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; continue with --resume", file=sys.stderr)
        return 130
    finally:
        if distributed:
            cleanup()


__all__ = ["build_parser", "main"]
