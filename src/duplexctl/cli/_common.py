"""What every `duplexctl` command shares: the two consoles, error exits and tables.

Results go to stdout (`console`) so they can be piped; errors, hints and progress go to stderr
(`err_console`). Cell text is never parsed as rich markup: details carry paths, URLs and
``duplex[ml]``-style strings whose square brackets rich would otherwise swallow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NoReturn

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from duplexd.errors import DuplexError

__all__ = ["Cell", "console", "err_console", "fail", "table"]

# The console's file is looked up at print time, so CliRunner's captured streams work.
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

Cell = str | Text


def fail(err: DuplexError | str, code: int | None = None) -> NoReturn:
    """Print ``error: …`` (and ``  hint: …``) in red on stderr, then exit.

    The exit code is `code`, else the error's own `exit_code` (errors.py), else 1.
    """
    message, hint = (err.message, err.hint) if isinstance(err, DuplexError) else (err, None)
    err_console.print(Text(f"error: {message}", style="bold red"))
    if hint:
        err_console.print(Text(f"  hint: {hint}", style="red"))
    if code is None:
        code = err.exit_code if isinstance(err, DuplexError) else 1
    raise typer.Exit(code)


def table(
    *columns: str,
    rows: Iterable[Sequence[Cell]],
    title: str | None = None,
    no_wrap: Sequence[str] = (),
    ratios: Mapping[str, int] | None = None,
) -> Table:
    """A plain, readable table: bold header, no row lines.

    `no_wrap` columns (ids, names) never fold, so they stay greppable. With `ratios`, the table
    fills the terminal and the named columns share what the others leave in that proportion;
    without it, rich shrinks the widest columns first.
    """
    ratios = ratios or {}
    out = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        header_style="bold",
        title_justify="left",
        expand=bool(ratios),
    )
    for name in columns:
        out.add_column(name, no_wrap=name in no_wrap, overflow="fold", ratio=ratios.get(name))
    for row in rows:
        out.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in row))
    return out
