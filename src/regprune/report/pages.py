"""Generated blocks inside hand-written Markdown pages.

Why: a benchmark page mixes prose a person writes (the reading, where we lose) with tables a
script regenerates; rerunning the script must replace its own block and nothing else. The block
sits between two marker lines (HTML comments, invisible in the rendered page).
"""

from __future__ import annotations

from pathlib import Path

from regprune.io import atomic_write_text


def write_generated_block(
    path: Path, block: str, *, start: str, end: str, heading: str = ""
) -> None:
    """Put ``block`` between the ``start`` and ``end`` markers of the page at ``path``.

    An existing block is replaced and the text around it kept; a page without the markers (or
    no page yet) gets the block appended at its end, under ``heading`` when given. Written
    atomically: an interrupted run leaves the old page.
    """
    text = path.read_text() if path.exists() else ""
    generated = f"{start}\n{block}\n{end}"
    if start in text and end in text.split(start, 1)[1]:
        head, rest = text.split(start, 1)
        text = head + generated + rest.split(end, 1)[1]
    else:
        prefix = f"{heading}\n\n" if heading else ""
        text = text.rstrip("\n") + f"\n\n{prefix}{generated}\n"
    atomic_write_text(path, text)
