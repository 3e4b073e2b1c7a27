"""`duplexctl logs`: read a daemon's log as readable lines, follow it, or list the log files
(the daemons that `duplexctl up` runs; see `duplexctl.cli.daemons`)."""

# the supervisor's log helpers load inside the command: `--help` stays fast

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from duplexctl.cli._common import console, fail
from duplexctl.cli.tables import Column, Listing, Output, OutputOpt, emit, print_json
from duplexctl.format import duration, human_bytes
from duplexd.errors import InvalidArgument

if TYPE_CHECKING:
    from duplexctl.supervise.state import StateStore

__all__ = ["logs"]


def logs(
    name: Annotated[
        str | None, typer.Argument(help="Daemon name (see `duplexctl status`); omit to list.")
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Keep printing new lines (across restarts) until Ctrl-C."
        ),
    ] = False,
    lines: Annotated[
        int | None, typer.Option("--lines", "-n", min=0, help="Only the last N lines.")
    ] = None,
    raw: Annotated[
        bool, typer.Option("--json", help="The raw JSON lines, exactly as the daemon wrote them.")
    ] = False,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Print a daemon's log as readable lines, or list the log files.

    Each line: local time (HH:MM:SS.mmm; a date line first and when the day changes), level,
    component, event, then key=value. The supervisor marks every start and restart with a
    rule line. `--json` prints the raw JSON lines instead (for jq). `-o` applies to the list.

    [bold]Examples[/bold]

      duplexctl logs                        which logs exist

      duplexctl logs tts-worker@0 -f        follow worker 0, through its restarts

      duplexctl logs supervisor -n 50       the background supervisor's last 50 lines

      duplexctl logs tts-worker@0 --json | jq -r 'select(.level=="error") | .event'
    """
    from duplexctl.supervise.logs import log_files
    from duplexctl.supervise.state import StateStore

    store = StateStore()
    files = log_files(store)
    if name is None:
        _list_logs(store, files, output)
        return
    if name not in files:
        known = ", ".join(files) or "none yet"
        fail(InvalidArgument(f"no log for {name!r}; known: {known}"))
    _print_log(files[name], follow, lines, raw)


def _list_logs(store: StateStore, files: dict[str, Path], output: Output) -> None:
    if output is Output.JSON:
        print_json(
            {
                "logs_dir": str(store.logs_dir),
                "logs": [
                    {"name": n, "file": str(p), "size_bytes": p.stat().st_size,
                     "modified_unix": round(p.stat().st_mtime, 3)}
                    for n, p in files.items()
                ],
            }
        )  # fmt: skip
        return
    if not files:
        console.print(f"no logs yet in {store.logs_dir} — start daemons with `duplexctl up`")
        return
    columns = [
        Column("NAME"),
        Column("SIZE", justify="right"),
        Column("MODIFIED", drop=1),
        Column("FILE", drop=2),
    ]
    rows = [
        [name, human_bytes(path.stat().st_size), _ago(path.stat().st_mtime), str(path)]
        for name, path in files.items()
    ]
    emit(Listing(columns, rows, wide=output is Output.WIDE))


def _ago(mtime: float) -> str:
    return f"{duration(max(time.time() - mtime, 0))} ago"


def _print_log(path: Path, follow: bool, lines: int | None, raw: bool) -> None:
    from duplexctl.logfmt import LogFormatter
    from duplexctl.supervise.logs import follow_lines, read_log

    text, offset = read_log(path, lines)
    whole, _, partial = text.rpartition("\n") if not text.endswith("\n") else (text, "", "")
    offset -= len(partial.encode())  # a half-written last line: follow prints it whole
    formatter = LogFormatter()
    pretty = console.is_terminal

    def show(line: str) -> None:
        if raw:
            typer.echo(line)
            return
        for shown in formatter.format(line):
            if pretty:
                console.print(shown, soft_wrap=True)
            else:
                typer.echo(shown.plain)

    for line in whole.splitlines():
        show(line)
    if not follow:
        if partial:
            show(partial)
        return
    try:
        for line in follow_lines(path, offset):
            show(line)
    except KeyboardInterrupt:
        pass
