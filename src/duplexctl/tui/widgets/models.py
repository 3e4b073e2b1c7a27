"""Models: every catalog entry on every worker, with keys to load, unload, pin and preload."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import DataTable

from duplexctl.format import human_bytes
from duplexctl.modelstate import short_reason, state_style, state_word
from duplexctl.tui.views import ModelView, Snapshot, WorkerView
from duplexctl.tui.widgets.format import ago, countdown, ms
from duplexctl.tui.widgets.panel import Panel, cursor_key, sync_table

__all__ = ["VERBS", "ModelsPanel", "model_state"]

# verb -> what the dashboard says while it runs
VERBS = {
    "load": "loading",
    "unload": "unloading",
    "force_unload": "unloading",
    "pin": "pinning",
    "unpin": "unpinning",
    "preload": "loading",
}
_COLUMNS = ("WORKER", "MODEL", "STATE", "MARKS", "REFS", "MEMORY", "TTL", "LAST USED", "LOAD")
_STATE_STYLES = {
    "resident": "bold green",
    "idle": "green",
    "loading": "yellow",
    "unloading": "yellow",
    "not loaded": "dim",
    "unavailable": "red",
}
_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class ModelsPanel(Panel):
    BORDER_TITLE = "Models"

    DEFAULT_CSS = """
    ModelsPanel DataTable { height: auto; max-height: 16; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("l", "request('load')", "Load"),
        Binding("u", "request('unload')", "Unload"),
        Binding("U", "request('force_unload')", "Force unload", show=False),
        Binding("p", "request('pin')", "Pin"),
        Binding("P", "request('unpin')", "Unpin", show=False),
        Binding("a", "request('preload')", "Preload everywhere", show=False),
    ]

    class ActionRequested(Message):
        """Run `verb` on `model_id` at worker `addr` ("" = on every worker)."""

        def __init__(self, verb: str, model_id: str, addr: str) -> None:
            super().__init__()
            self.verb = verb
            self.model_id = model_id
            self.addr = addr

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.pending: Mapping[tuple[str, str], str] = {}  # (addr, model) -> verb in flight
        self._snapshot: Snapshot | None = None
        self._now = 0.0

    def compose(self) -> ComposeResult:
        table: DataTable[Text] = DataTable(cursor_type="row")
        for name in _COLUMNS:
            table.add_column(name, key=name)
        yield table

    def show(self, snapshot: Snapshot, now: float) -> None:
        self._snapshot, self._now = snapshot, now
        age_ms = (now - snapshot.taken_unix) * 1000  # the TTL counts down between polls
        rows = [
            (f"{w.addr} {m.id}", self._row(w, m, now, age_ms))
            for w in snapshot.workers
            for m in w.models
        ]
        sync_table(self.query_one(DataTable), rows)
        resident = sum(m.resident for w in snapshot.workers for m in w.models)
        self.set_subtitle(f"{resident} resident · {len(rows)} in the catalogs")

    def set_pending(self, pending: Mapping[tuple[str, str], str]) -> None:
        self.pending = dict(pending)
        if self._snapshot is not None:
            self.show(self._snapshot, self._now)

    def selected(self) -> tuple[str, str] | None:
        """(worker address, model id) under the cursor."""
        key = cursor_key(self.query_one(DataTable))
        if key is None:
            return None
        addr, _, model_id = key.partition(" ")
        return addr, model_id

    def action_request(self, verb: str) -> None:
        chosen = self.selected()
        if chosen is None:
            self.notify("no model selected", severity="warning")
            return
        addr, model_id = chosen
        self.post_message(self.ActionRequested(verb, model_id, "" if verb == "preload" else addr))

    def _row(self, w: WorkerView, m: ModelView, now: float, age_ms: float) -> list[Text]:
        pending = self.pending.get((w.addr, m.id))
        counting = m.resident and m.ttl_remaining_ms >= 0
        ttl = countdown(max(m.ttl_remaining_ms - age_ms, 0)) if counting else "—"
        return [
            Text(w.name, style="dim"),
            Text(m.id, style="bold" if m.resident else ""),
            _state_cell(m, pending, now),
            _marks(m),
            Text(str(m.refcount) if m.resident else "—"),
            Text(human_bytes(m.memory_bytes), style="" if m.resident else "dim"),
            Text(ttl, style="yellow" if counting else ""),
            Text(ago(m.last_used_unix, now)),
            Text(ms(m.load_ms) if m.load_ms > 0 else "—"),
        ]


def model_state(m: ModelView) -> str:
    """The worker's word, as `duplexctl models list` shows it (duplexctl.modelstate), with
    resident told apart: resident (in use, pinned or default) · idle (its TTL running)."""
    if m.state == "resident":
        return "idle" if m.refcount == 0 and m.ttl_remaining_ms >= 0 else "resident"
    return state_word(m.status, m.state)


def _state_cell(m: ModelView, pending: str | None, now: float) -> Text:
    if pending is not None:
        spin = _SPINNER[int(now * 10) % len(_SPINNER)]
        return Text(f"{spin} {VERBS.get(pending, pending)}…", style="bold yellow")
    state = model_state(m)
    text = Text(state, style=_STATE_STYLES.get(state, state_style(state)))
    if state == "unavailable" and m.unavailable_reason:
        text.append(f": {short_reason(m.unavailable_reason)}", style="dim")
        text.truncate(28, overflow="ellipsis")
    return text


def _marks(m: ModelView) -> Text:
    text = Text()
    if m.is_default:
        text.append("★ default ", style="bold yellow")
    if m.pinned:
        text.append("● pinned", style="bold cyan")
    text.rstrip()
    return text
