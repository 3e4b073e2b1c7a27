"""Every table the console prints, from one renderer: fits a terminal, pipes cleanly, or JSON.

- On a terminal: a rich table (bold header, a rule under it, no row lines) that fits the width.
  Columns go by priority (`Column.drop`: the highest number first) until the rest fits; ids
  never wrap; only free-text columns (`fold`) may wrap onto more lines.
- ``-o wide``: every column, the wide-only ones too (`Column.wide`), nothing dropped.
- Not a terminal (a pipe, a file, CI): plain columns aligned with spaces, no box characters, no
  colour, every default column in full, one line per row, so that
  ``duplexctl models list | grep piper-en-us-joe`` and ``awk '{print $1}'`` work. Notes meant
  for a person (`note`) go to stderr then, keeping stdout to the table.
- ``-o json``: the command prints records (`print_json`) instead; their keys are stable and
  documented in docs/cli.md.

Standard library, typer and rich only: `duplexctl --help` imports this.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

import typer
from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

__all__ = [
    "Cell",
    "Column",
    "Listing",
    "Output",
    "OutputOpt",
    "emit",
    "note",
    "print_json",
]

Cell = str | Text
_GAP = "  "  # between plain columns: `_row` splitting on two spaces keeps multi-word cells


class Output(StrEnum):
    """`-o`: how a command prints its result."""

    TABLE = "table"
    WIDE = "wide"
    JSON = "json"


OutputOpt = Annotated[
    Output,
    typer.Option(
        "--output",
        "-o",
        case_sensitive=False,
        help="table: fits the terminal (plain columns when piped); wide: every column; "
        "json: machine-readable, keys in docs/cli.md.",
    ),
]


@dataclass(frozen=True)
class Column:
    """One column: its header and how it gives way on a narrow terminal."""

    name: str
    drop: int = 0  # 0: always shown; when the table is too wide the highest drop goes first
    wide: bool = False  # shown only with -o wide
    fold: bool = False  # free text that may wrap onto more lines (never an id)
    ratio: int | None = None  # with fold: fill the terminal, sharing the room in this ratio
    justify: Literal["left", "right"] = "left"


class Listing:
    """Columns and rows: a rich renderable that fits its terminal, or plain aligned text.

    Print it with `emit` (plain text is written as it is, never cut to a width); printed
    with ``Console.print`` it renders the same way, for consoles that are not stdout.
    """

    def __init__(
        self,
        columns: Sequence[Column | str],
        rows: Iterable[Sequence[Cell]],
        *,
        title: str | None = None,
        wide: bool = False,
    ) -> None:
        self.columns = [c if isinstance(c, Column) else Column(c) for c in columns]
        self.rows = [[c if isinstance(c, Text) else Text(c) for c in row] for row in rows]
        self.title = title
        self.wide = wide

    # -- rich -------------------------------------------------------------------------------

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not options.is_terminal:
            yield Text(self.plain().rstrip("\n"), no_wrap=True, overflow="ignore")
            return
        yield self.fitted(console, options)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(1, options.max_width)

    def fitted(self, console: Console, options: ConsoleOptions) -> Table:
        """The rich table for `options.max_width`: low-priority columns dropped until it fits."""
        shown = self.shown()
        unbounded = options.update_width(1 << 16)
        while not self.wide:
            natural = Measurement.get(console, unbounded, self._table(shown, expand=False))
            droppable = [c for c in shown if c.drop > 0]
            if natural.maximum <= options.max_width or not droppable:
                break
            victim = max(reversed(droppable), key=lambda c: c.drop)  # ties: the rightmost
            shown = [c for c in shown if c is not victim]
        return self._table(shown, expand=any(c.ratio for c in shown))

    def shown(self) -> list[Column]:
        """The columns this mode shows before any is dropped for width."""
        return [c for c in self.columns if self.wide or not c.wide]

    def _table(self, shown: Sequence[Column], *, expand: bool) -> Table:
        out = Table(
            title=self.title,
            box=box.SIMPLE_HEAD,
            header_style="bold",
            title_justify="left",
            expand=expand,
        )
        for c in shown:
            out.add_column(
                c.name,
                no_wrap=not c.fold,
                overflow="fold" if c.fold else "ellipsis",
                ratio=c.ratio,
                justify=c.justify,
            )
        index = [self.columns.index(c) for c in shown]
        for row in self.rows:
            out.add_row(*(row[i] for i in index))
        return out

    # -- plain ------------------------------------------------------------------------------

    def plain(self) -> str:
        """Aligned columns, two spaces apart, no styles, every shown column in full."""
        shown = self.shown()
        index = [self.columns.index(c) for c in shown]
        table = [[c.name for c in shown]] + [
            [_one_line(row[i].plain) for i in index] for row in self.rows
        ]
        widths = [max(len(r[j]) for r in table) for j in range(len(shown))]
        lines = [self.title] if self.title else []
        for r in table:
            cells = [
                r[j].rjust(widths[j]) if shown[j].justify == "right" else r[j].ljust(widths[j])
                for j in range(len(shown))
            ]
            lines.append(_GAP.join(cells).rstrip())
        return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    """A multi-line cell (one id per line on a terminal) as one line: ids joined by commas."""
    return ", ".join(part for part in text.splitlines() if part) if "\n" in text else text


def emit(listing: Listing, out: Console | None = None) -> None:
    """Print `listing` on `out` (stdout's console): fitted on a terminal, plain text elsewhere
    (written as it is: a pipe gets whole lines whatever its width)."""
    from duplexctl.cli._common import console

    out = out or console
    if out.is_terminal:
        out.print(listing)
    else:
        out.file.write(listing.plain())
        out.file.flush()


def note(text: str | Text, *, style: str = "dim") -> None:
    """A line for a person under a table: stdout on a terminal, stderr when stdout is piped
    (so the pipe gets the table alone)."""
    from duplexctl.cli._common import console, err_console

    line = text if isinstance(text, Text) else Text(text)
    line.stylize(style)
    (console if console.is_terminal else err_console).print(line)


def print_json(data: Mapping[str, Any] | Sequence[Any]) -> None:
    """`-o json`: one JSON document on stdout (UTF-8, indented, keys in docs/cli.md)."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
