"""The one way a command prints a table. Piped (stdout not a terminal): a header line and one
line per row, tab-separated, no box drawing, every column, so ``cut`` and ``awk`` read it. On a
terminal: a rich table no wider than 80 characters, with the columns marked ``narrow``; ``wide``
shows them all."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TextIO

TERMINAL_WIDTH = 80


@dataclass(frozen=True)
class Column:
    name: str
    right: bool = False  # numbers
    narrow: bool = True  # shown on an 80-column terminal without --wide


def print_table(
    columns: Sequence[Column],
    rows: Iterable[Sequence[object]],
    *,
    title: str | None = None,
    wide: bool = False,
    file: TextIO | None = None,
    terminal: bool | None = None,
) -> None:
    """``rows`` hold one value per column (``None`` prints as ``-``). ``terminal`` overrides
    the check of ``file`` (for tests)."""
    file = file or sys.stdout
    if terminal is None:
        terminal = file.isatty()
    rows = [[_text(value) for value in row] for row in rows]
    if not terminal:
        print("\t".join(c.name for c in columns), file=file)
        for row in rows:
            print("\t".join(_one_line(cell) for cell in row), file=file)
        return
    from rich.console import Console
    from rich.table import Table

    keep = [i for i, c in enumerate(columns) if wide or c.narrow]
    table = Table(title=title)
    for i in keep:
        name = columns[i].name
        table.add_column(name, justify="right" if columns[i].right else "left", min_width=len(name))
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    console = Console(file=file, force_terminal=True, highlight=False)
    if not wide:
        console.width = min(console.width, TERMINAL_WIDTH)
    console.print(table)


def _text(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def _one_line(cell: str) -> str:
    return ", ".join(" ".join(part.split()) for part in cell.splitlines()) or "-"
