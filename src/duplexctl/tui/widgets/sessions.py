"""Sessions: every live conversation with its state, model, worker and transcript tail."""

from __future__ import annotations

from rich import box
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult

from duplexctl.tui.views import SessionView, Snapshot
from duplexctl.tui.widgets.body import Body
from duplexctl.tui.widgets.format import Tail
from duplexctl.tui.widgets.panel import Panel

__all__ = ["SessionsPanel"]

_COLUMNS = (("SESSION", 8), ("STATE", 9), ("TURN", 4), ("MODEL", 16), ("WORKER", 14))
_STATE_STYLES = {"listening": "green", "speaking": "bold cyan", "barged_in": "bold magenta"}


class SessionsPanel(Panel):
    """A plain table, not a DataTable: nothing to select, and Rich shares out the width so
    the transcript (the part worth reading) gets whatever the fixed columns leave."""

    BORDER_TITLE = "Sessions"

    def compose(self) -> ComposeResult:
        yield Body(id="sessions-body")

    def show(self, snapshot: Snapshot, now: float) -> None:
        orch = snapshot.orchestrator
        sessions = orch.sessions if orch is not None and orch.reachable else ()
        self.query_one(Body).show(_table(sessions), shape=len(sessions), key=sessions)
        if orch is None:
            self.set_subtitle("no orchestrator (--orchestrator HOST:PORT)")
        elif not orch.reachable:
            self.set_subtitle("orchestrator unreachable")
        else:
            self.set_subtitle(f"{len(sessions)} live")


def _table(sessions: tuple[SessionView, ...]) -> Table:
    table = Table(
        box=box.SIMPLE_HEAD, header_style="bold", expand=True, padding=(0, 2, 0, 0), show_edge=False
    )
    for name, widest in _COLUMNS:
        table.add_column(name, no_wrap=True, overflow="ellipsis", width=widest)
    table.add_column("TRANSCRIPT", ratio=1, no_wrap=True, overflow="crop")
    for s in sessions:
        table.add_row(
            s.session_id[:8],
            Text(s.state.replace("_", "-"), style=_STATE_STYLES.get(s.state, "")),
            str(s.turn),
            s.model or "—",
            s.worker or "—",
            Tail(s.transcript_tail, style="italic"),  # the newest words matter most
        )
    return table
