"""The pruning pipeline behind ``regprune run``: pretrain -> sparsify -> prune -> finetune ->
report, driven by a typed YAML config, writing one self-contained, resumable run directory.

Example:
    >>> from regprune.pipeline import load_config, run_pipeline
    >>> config = load_config("configs/quickstart.yaml", ["finetune.epochs=3"])  # doctest: +SKIP
    >>> outcome = run_pipeline(config)  # doctest: +SKIP
    >>> outcome.report_path  # doctest: +SKIP
"""

from regprune.pipeline.config import (
    RunConfig,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
    parse_override,
    parse_yaml,
)
from regprune.pipeline.context import PHASES, RunContext
from regprune.pipeline.evaluate import evaluate_run
from regprune.pipeline.run import RunOutcome, run_pipeline
from regprune.pipeline.rundir import RunDir, RunDirError
from regprune.pipeline.typed import ConfigError

__all__ = [
    "PHASES",
    "ConfigError",
    "RunConfig",
    "RunContext",
    "RunDir",
    "RunDirError",
    "RunOutcome",
    "apply_overrides",
    "config_from_dict",
    "dump_config",
    "evaluate_run",
    "load_config",
    "parse_override",
    "parse_yaml",
    "run_pipeline",
]
