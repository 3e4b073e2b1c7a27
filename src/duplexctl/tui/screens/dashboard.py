"""The dashboard: every panel on one screen, fed by a poller, with model and daemon actions.

The feed is one exclusive worker: poll (each source under a deadline), show, sleep until the
next tick or an explicit "poll now" after an action. Actions run as their own workers, so a
30-second model load never stalls the feed; while one runs, its model row and the activity
strip say so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Protocol

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input

from duplexctl.tui.data import Poller
from duplexctl.tui.screens.commands import DaemonCommands, ModelCommands
from duplexctl.tui.screens.confirm import ConfirmScreen
from duplexctl.tui.views import Snapshot
from duplexctl.tui.widgets.activity import ActivityBar
from duplexctl.tui.widgets.daemons import DaemonsPanel
from duplexctl.tui.widgets.empty import NothingRunning
from duplexctl.tui.widgets.latency import LatencyPanel
from duplexctl.tui.widgets.logs import LogPane
from duplexctl.tui.widgets.memory import MemoryPanel
from duplexctl.tui.widgets.models import VERBS, ModelsPanel
from duplexctl.tui.widgets.panel import Panel
from duplexctl.tui.widgets.sessions import SessionsPanel
from duplexd.errors import DuplexError

if TYPE_CHECKING:
    from duplexd.rpc import tts_pb2 as pb

__all__ = ["DashScreen", "FleetControl"]

_DAEMON_QUESTIONS = {
    "stop": "Stop every daemon (duplexctl down)? Live sessions end.",
    "restart_all": "Restart every daemon (duplexctl down, then up --detach)? Live sessions end.",
}


class FleetControl(Protocol):
    """What the daemon actions need: start, stop and restart the fleet or one daemon.

    Each answers (succeeded, a message for the notification). The app passes its own
    (`duplexctl.tui.app.DaemonControl`); the protocol lives here, with its one user, so that
    no screen imports the app.
    """

    async def start(self) -> tuple[bool, str]: ...

    async def stop(self) -> tuple[bool, str]: ...

    async def restart_all(self) -> tuple[bool, str]: ...

    def restart(self, name: str) -> tuple[bool, str]: ...


class DashScreen(Screen[None]):
    COMMANDS: ClassVar = {ModelCommands, DaemonCommands}

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "daemons('start')", "Start"),
        Binding("x", "daemons('stop')", "Stop"),
        Binding("r", "daemons('restart')", "Restart daemon"),
        Binding("R", "daemons('restart_all')", "Restart all", show=False),
        Binding("slash", "focus_filter", "Filter logs", show=False),
        Binding("f5", "poll_now", "Refresh", show=False),
    ]

    def __init__(
        self,
        *,
        poller: Poller | None,
        control: FleetControl | None,
        snapshot: Snapshot | None = None,
        interval_s: float = 0.5,
        clock: Callable[[], float],
    ) -> None:
        super().__init__()
        self.poller = poller
        self.control = control
        self.snapshot = snapshot
        self.interval_s = interval_s
        self.clock = clock
        self.pending: dict[tuple[str, str], str] = {}  # (worker addr, model) -> verb
        self.daemon_task = ""
        self._wake = asyncio.Event()

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="dash"):
            with Horizontal(id="top"):
                yield DaemonsPanel(id="daemons")
                yield MemoryPanel(id="memory")
            yield ModelsPanel(id="models")
            with Horizontal(id="middle"):
                yield LatencyPanel(id="latency")
                yield SessionsPanel(id="sessions")
            yield LogPane(id="logs")
        yield NothingRunning(id="nothing")
        yield ActivityBar()
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#models DataTable", DataTable).focus()
        self.show(self.snapshot)
        if self.poller is not None:
            self.feed()

    # -- the feed ------------------------------------------------------------------------------

    @work(exclusive=True, group="feed")
    async def feed(self) -> None:
        assert self.poller is not None
        while True:
            self.show(await self.poller.poll())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)

    def show(self, snapshot: Snapshot | None) -> None:
        """Draw a snapshot: the panels, or how to start daemons when none is known."""
        self.snapshot = snapshot
        if snapshot is None:  # not polled yet
            self._switch(dash=False, nothing=False)
            return
        self._switch(dash=not snapshot.nothing_running, nothing=snapshot.nothing_running)
        if snapshot.nothing_running:
            return
        now = self.clock()
        for panel in self.query(Panel):
            panel.show(snapshot, now)

    def _switch(self, *, dash: bool, nothing: bool) -> None:
        """Show the panels or the "nothing is running" page; focus moves with the switch."""
        panels, empty = self.query_one("#dash"), self.query_one(NothingRunning)
        if (panels.display, empty.display) == (dash, nothing):
            return
        panels.display, empty.display = dash, nothing
        if dash or nothing:
            self.query_one("#models DataTable" if dash else "#start").focus()

    def action_poll_now(self) -> None:
        self._wake.set()

    def action_focus_filter(self) -> None:
        self.query_one("#log-filter", Input).focus()

    # -- model actions -------------------------------------------------------------------------

    @on(ModelsPanel.ActionRequested)
    def _model_requested(self, event: ModelsPanel.ActionRequested) -> None:
        self.request_model(event.verb, event.model_id, event.addr)

    def request_model(self, verb: str, model_id: str, addr: str) -> None:
        """Run `verb` (load, unload, force_unload, pin, unpin, preload) on a worker or all."""
        self.run_model_action(verb, model_id, addr)

    @work(group="actions")
    async def run_model_action(self, verb: str, model_id: str, addr: str) -> None:
        addrs = [addr] if addr else self._reachable_workers()
        if not addrs or self.poller is None:
            self.app.notify("no worker to ask", severity="warning")
            return
        if verb.endswith("unload"):
            force = " with force (pinned or default too)" if verb == "force_unload" else ""
            question = f"Unload {model_id} from {self._worker_name(addrs[0])}{force}?"
            if not await self.app.push_screen_wait(ConfirmScreen(question)):
                return
        self._set_pending([(a, model_id) for a in addrs], verb)
        try:
            await asyncio.gather(*(self._model_call(verb, model_id, a) for a in addrs))
        finally:
            self._set_pending([(a, model_id) for a in addrs], None)
            self._wake.set()

    async def _model_call(self, verb: str, model_id: str, addr: str) -> None:
        assert self.poller is not None
        client, where = self.poller.client(addr), self._worker_name(addr)
        try:
            if verb.endswith("unload"):
                freed = await client.unload_model(model_id, force=verb == "force_unload")
                self.app.notify(f"{model_id} unloaded from {where}{_freed(freed)}")
                return
            resp = await client.load_model(model_id, pin=verb == "pin", unpin=verb == "unpin")
        except DuplexError as exc:
            title = f"{verb.replace('_', ' ')} {model_id} refused by {where}"
            self.app.notify(str(exc), title=title, severity="error", timeout=10)
            return
        self.app.notify(_load_message(verb, model_id, where, resp))

    def _set_pending(self, keys: list[tuple[str, str]], verb: str | None) -> None:
        for key in keys:
            if verb is None:
                self.pending.pop(key, None)
            else:
                self.pending[key] = verb
        self.query_one(ModelsPanel).set_pending(self.pending)
        self._show_activity()

    def _show_activity(self) -> None:
        tasks = [f"{VERBS[v]} {m} on {self._worker_name(a)}" for (a, m), v in self.pending.items()]
        if self.daemon_task:
            tasks.append(self.daemon_task)
        self.query_one(ActivityBar).show(tasks)

    def _reachable_workers(self) -> list[str]:
        snap = self.snapshot
        return [w.addr for w in snap.workers if w.reachable] if snap is not None else []

    def _worker_name(self, addr: str) -> str:
        worker = self.snapshot.worker(addr) if self.snapshot is not None else None
        return worker.name if worker is not None else addr

    # -- daemon actions ------------------------------------------------------------------------

    def action_daemons(self, verb: str) -> None:
        self.request_daemons(verb)

    @on(NothingRunning.StartRequested)
    def _start_requested(self) -> None:
        self.request_daemons("start")

    def request_daemons(self, verb: str) -> None:
        """start (up --detach), stop (down), restart (the selected daemon), restart_all."""
        self.run_daemon_action(verb)

    @work(exclusive=True, group="daemons")
    async def run_daemon_action(self, verb: str) -> None:
        if self.control is None:
            self.app.notify("daemon control is off in this dashboard", severity="warning")
            return
        question = _DAEMON_QUESTIONS.get(verb)
        if verb == "restart":
            daemon = self.query_one(DaemonsPanel).selected()
            if daemon is None:
                self.app.notify("no daemon selected", severity="warning")
                return
            question = f"Restart {daemon.name} ({daemon.addr})? Its sessions end."
        if question and not await self.app.push_screen_wait(ConfirmScreen(question)):
            return
        self.daemon_task = {"start": "starting daemons", "stop": "stopping daemons"}.get(
            verb, "restarting"
        )
        self._show_activity()
        try:
            ok, message = await self._daemon_call(verb)
        finally:
            self.daemon_task = ""
            self._show_activity()
            self._wake.set()
        self.app.notify(message, severity="information" if ok else "error", timeout=10)

    async def _daemon_call(self, verb: str) -> tuple[bool, str]:
        control = self.control
        assert control is not None
        if verb == "start":
            return await control.start()
        if verb == "stop":
            return await control.stop()
        if verb == "restart_all":
            return await control.restart_all()
        daemon = self.query_one(DaemonsPanel).selected()
        return control.restart(daemon.name) if daemon else (False, "no daemon selected")


def _freed(resp: pb.UnloadModelResp) -> str:
    from duplexctl.format import human_bytes

    return f" (freed {human_bytes(resp.freed_bytes)})" if resp.freed_bytes else ""


def _load_message(verb: str, model_id: str, where: str, resp: pb.LoadModelResp) -> str:
    if verb == "unpin":
        return f"{model_id} unpinned on {where}: the TTL applies again"
    done = "was already resident" if resp.already_resident else f"loaded in {resp.load_ms:.0f} ms"
    pinned = ", pinned" if verb == "pin" else ""
    evicted = f"; evicted {', '.join(resp.evicted)}" if resp.evicted else ""
    return f"{model_id} on {where} {done}{pinned}{evicted}"
