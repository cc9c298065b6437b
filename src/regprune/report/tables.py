"""Plain tables: Markdown for reports, aligned text for the CLI's ``count`` and ``prune``.

Cells are strings; numbers are formatted by the caller (``format_count``, :func:`percent`), so one
table never mixes two formats for the same quantity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from regprune.metrics import ModelCount, format_count

Align = str
"""``"l"`` (left) or ``"r"`` (right): text left, numbers right, as a reader scans them."""


def _check(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[Align]) -> None:
    if len(align) != len(header):
        raise ValueError(f"align has {len(align)} entries for {len(header)} columns")
    if any(a not in ("l", "r") for a in align):
        raise ValueError(f"align entries must be 'l' or 'r', got {list(align)}")
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"row {i} has {len(row)} cells for {len(header)} columns: {row}")


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[Align] | None = None
) -> str:
    """A GitHub-flavoured Markdown table.

    ``|`` inside a cell is escaped, since layer names and commands may contain it and would
    otherwise split the row.

    Args:
        header: column titles.
        rows: one sequence of cell strings per row, each as long as ``header``.
        align: ``"l"`` or ``"r"`` per column; default: first column left, the others right.

    Returns:
        The table, lines joined by ``\\n``, no trailing newline.

    Example::

        markdown_table(["layer", "width"], [["conv1", "16"]])
    """
    align = align or ["l"] + ["r"] * (len(header) - 1)
    _check(header, rows, align)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return "\n".join([line(header), rule, *map(line, rows)])


def console_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[Align] | None = None
) -> str:
    """An aligned plain-text table with rules under the header and above a final total row.

    The last row is treated as a total when ``rows`` has more than one row, matching
    ``ModelCount.table()``.
    """
    align = align or ["l"] + ["r"] * (len(header) - 1)
    _check(header, rows, align)
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]

    def render(cells: Sequence[str]) -> str:
        parts = [
            str(c).rjust(w) if a == "r" else str(c).ljust(w)
            for c, w, a in zip(cells, widths, align, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "-" * len(render(header))
    body = [render(r) for r in rows]
    if len(body) > 1:
        body.insert(len(body) - 1, rule)
    return "\n".join([render(header), rule, *body])


def percent(fraction: float, digits: int = 2) -> str:
    """``0.9123 -> "91.23 %"``: accuracies are stored as fractions, read as percentages."""
    return f"{100 * fraction:.{digits}f} %"


def reduction(before: float, after: float) -> str:
    """How much smaller ``after`` is, as a percentage of ``before``: ``(100, 40) -> "60.0 %"``.

    Negative when ``after`` grew; ``"n/a"`` when ``before`` is 0 (nothing to reduce).
    """
    if before == 0:
        return "n/a"
    return f"{100 * (before - after) / before:.1f} %"


def layer_console_table(
    cost: ModelCount,
    widths: Mapping[str, int],
    pruned_cost: ModelCount | None = None,
    pruned_widths: Mapping[str, int] | None = None,
) -> str:
    """Per-layer widths and MACs for the CLI: one model (``count``) or before/after (``prune``).

    Only layers that have a width or cost MACs are listed (BN, activations and pooling are free
    under the MACs convention and would bury the rows that matter).

    Args:
        cost: ``count(model, x, per_layer=True)``.
        widths: output width per layer name, e.g. :func:`regprune.report.layer_widths`.
        pruned_cost: the same for the pruned model, to show before and after side by side.
        pruned_widths: widths of the pruned model; required with ``pruned_cost``.

    Raises:
        ValueError: ``cost`` was counted without ``per_layer=True``, or only one of
            ``pruned_cost`` / ``pruned_widths`` is given.
    """
    if not cost.per_layer:
        raise ValueError("cost has no per-layer entries; count it with per_layer=True")
    if (pruned_cost is None) != (pruned_widths is None):
        raise ValueError("give pruned_cost and pruned_widths together, or neither")
    layers = [layer for layer in cost.per_layer if layer.macs or layer.name in widths]

    def width(table: Mapping[str, int], name: str) -> str:
        return str(table[name]) if name in table else ""

    if pruned_cost is None or pruned_widths is None:
        header = ["layer", "type", "width", "MACs"]
        rows = [
            [layer.name, layer.type_name, width(widths, layer.name), format_count(layer.macs)]
            for layer in layers
        ]
        rows.append(["total", "", "", format_count(cost.macs)])
        return console_table(header, rows, ["l", "l", "r", "r"])

    if not pruned_cost.per_layer:
        raise ValueError("pruned_cost has no per-layer entries; count it with per_layer=True")
    macs_after = {layer.name: layer.macs for layer in pruned_cost.per_layer}
    header = ["layer", "type", "width before", "width after", "MACs before", "MACs after"]
    rows = [
        [
            layer.name,
            layer.type_name,
            width(widths, layer.name),
            width(pruned_widths, layer.name),
            format_count(layer.macs),
            format_count(macs_after.get(layer.name, 0)),
        ]
        for layer in layers
    ]
    rows.append(["total", "", "", "", format_count(cost.macs), format_count(pruned_cost.macs)])
    return console_table(header, rows, ["l", "l", "r", "r", "r", "r"])
