"""Report a run: ``summary.json`` (typed), ``report.md`` with tables and PNG plots.

Example::

    from regprune.report import RunSummary, width_changes, write_report

    widths = width_changes(model, small)
    RunSummary(method="masksparsity", model="resnet56", ..., layer_widths=widths, ratio=0.5).save(
        run_dir
    )
    write_report(run_dir)  # run_dir/report.md, run_dir/plots/*.png
"""

from regprune.report.machine import describe_machine, machine_info
from regprune.report.markdown import write_report
from regprune.report.pages import write_generated_block
from regprune.report.rundir import load_snapshot, read_metrics, snapshot_paths
from regprune.report.summary import RunSummary
from regprune.report.tables import console_table, layer_console_table, markdown_table
from regprune.report.widths import layer_widths, width_changes

__all__ = [
    "RunSummary",
    "console_table",
    "describe_machine",
    "layer_console_table",
    "layer_widths",
    "load_snapshot",
    "machine_info",
    "markdown_table",
    "read_metrics",
    "snapshot_paths",
    "width_changes",
    "write_generated_block",
    "write_report",
]
