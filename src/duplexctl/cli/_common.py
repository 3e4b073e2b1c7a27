"""What every `duplexctl` command shares: the two consoles, error exits and tables.

Tables are `duplexctl.cli.tables`' (fit a terminal, plain when piped, `-o wide|json`).

Results go to stdout (`console`) so they can be piped; errors, hints and progress go to stderr
(`err_console`). Cell text is never parsed as rich markup: details carry paths, URLs and
``duplex[ml]``-style strings whose square brackets rich would otherwise swallow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

from duplexctl.cli.tables import Cell, Column, Listing
from duplexd.errors import DuplexError

__all__ = ["Cell", "console", "err_console", "fail", "table"]

# The console's file is looked up at print time, so CliRunner's captured streams work.
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


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
) -> Listing:
    """A table whose columns all stay (see `duplexctl.cli.tables` for priorities and `-o`).

    `no_wrap` columns (ids, names) never fold, so they stay greppable; the others may wrap.
    With `ratios`, the table fills the terminal and the named columns share what the others
    leave in that proportion. Not on a terminal, it prints as plain aligned columns.
    """
    ratios = ratios or {}
    spec = [Column(name, fold=name not in no_wrap, ratio=ratios.get(name)) for name in columns]
    return Listing(spec, rows, title=title)
