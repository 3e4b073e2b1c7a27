"""Daemons: health, address, uptime, restarts and ping; a dead one in red with its last log line."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable

from duplexctl.format import duration
from duplexctl.tui.views import DaemonView, Snapshot
from duplexctl.tui.widgets.body import Body
from duplexctl.tui.widgets.format import format_log, ms
from duplexctl.tui.widgets.panel import Panel, cursor_key, sync_table

__all__ = ["DaemonsPanel"]

_HEALTH_STYLES = {"up": "green", "starting": "yellow", "restarting": "yellow", "stopping": "yellow"}
_COLUMNS = ("DAEMON", "KIND", "ADDRESS", "HEALTH", "UPTIME", "RESTARTS", "PING")


class DaemonsPanel(Panel):
    BORDER_TITLE = "Daemons"

    DEFAULT_CSS = """
    DaemonsPanel DataTable { height: auto; max-height: 10; overflow-x: hidden; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._daemons: tuple[DaemonView, ...] = ()

    def compose(self) -> ComposeResult:
        table: DataTable[Text] = DataTable(cursor_type="row", zebra_stripes=False)
        for name in _COLUMNS:
            table.add_column(name, key=name)
        yield table
        yield Body(id="notes")

    def show(self, snapshot: Snapshot, now: float) -> None:
        self._daemons = snapshot.daemons
        rows = [(_key(d), _row(d, now)) for d in snapshot.daemons]
        sync_table(self.query_one(DataTable), rows)
        notes = [_note(d) for d in snapshot.daemons if d.note]
        joined = Text("\n", no_wrap=True, overflow="ellipsis").join(notes)
        self.query_one(Body).show(joined, shape=len(notes), key=joined.plain)
        self.query_one(Body).display = bool(notes)
        self.set_subtitle(_supervisor(snapshot))

    def selected(self) -> DaemonView | None:
        key = cursor_key(self.query_one(DataTable))
        return next((d for d in self._daemons if _key(d) == key), None)


def _key(d: DaemonView) -> str:
    return f"{d.kind} {d.addr}"  # unique, where two hand-started workers may share a name


def _row(d: DaemonView, now: float) -> list[Text]:
    up = d.health == "up"
    style = "" if up else _HEALTH_STYLES.get(d.health, "red")
    cells = [
        d.name,
        d.kind,
        d.addr,
        d.health,
        duration(now - d.started_unix) if up and d.started_unix else "—",
        str(d.restarts),
        ms(d.ping_ms) if d.ping_ms is not None else "—",
    ]
    row = [Text(c, style=style) for c in cells]
    row[3] = Text(d.health, style=_HEALTH_STYLES.get(d.health, "bold red"))
    return row


def _note(d: DaemonView) -> Text:
    """``name health: last log line`` for a daemon that is not up."""
    line = format_log("", d.note).text if d.note.startswith("{") else Text(d.note)
    note = Text.assemble(
        (f"{d.name} {d.health}: ", "bold"), line, no_wrap=True, overflow="ellipsis"
    )
    note.stylize("red" if d.health in ("down", "unresponsive") else "yellow")
    return note


def _supervisor(snapshot: Snapshot) -> str:
    if snapshot.supervisor_pid is None:
        return "not supervised" if snapshot.daemons else ""
    if snapshot.supervisor_alive:
        return f"supervisor pid {snapshot.supervisor_pid}"
    return f"supervisor pid {snapshot.supervisor_pid} is gone — `duplexctl down` cleans up"
