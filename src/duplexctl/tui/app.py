"""`DashApp`: the operator's live view of the daemons, and the hands to start and steer them.

The app is thin: it builds the `Poller` (data.py) and a `DaemonControl`, pushes the dashboard
screen and closes the poller's connections on the way out. Everything time-dependent reads
`clock`, so snapshot tests freeze it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from textual.app import App
from textual.binding import Binding, BindingType

from duplexctl.supervise.spec import UpOptions
from duplexctl.supervise.state import StateStore
from duplexctl.tui.data import Poller
from duplexctl.tui.screens.dashboard import DashScreen
from duplexctl.tui.views import Snapshot
from duplexd.errors import DuplexError

__all__ = ["DaemonControl", "DashApp"]


class DaemonControl:
    """Start and stop the fleet as `duplexctl up --detach` / `down` do, in-process.

    The same functions (supervise.control: `start_fleet`, `stop_fleet`) run in a thread, so
    the dashboard and the console start one supervisor the same way; `options` are `up`'s.
    """

    def __init__(
        self,
        *,
        state_dir: Path | None = None,
        options: UpOptions | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        self.state_dir = state_dir
        self.options = options or UpOptions()
        self.timeout_s = timeout_s

    async def start(self) -> tuple[bool, str]:
        from duplexctl.supervise.control import start_fleet

        store = StateStore(self.state_dir)
        try:
            state = await asyncio.to_thread(
                start_fleet, store, self.options, timeout_s=self.timeout_s
            )
        except DuplexError as exc:
            return False, f"start failed: {exc}"
        names = ", ".join(d.name for d in state.daemons)
        return True, f"started {names} (supervisor pid {state.supervisor_pid})"

    async def stop(self) -> tuple[bool, str]:
        from duplexctl.supervise.control import stop_fleet

        try:
            report = await asyncio.to_thread(stop_fleet, StateStore(self.state_dir))
        except DuplexError as exc:
            return False, f"stop failed: {exc}"
        if report is None:
            return True, "nothing was running"
        stopped = [*(["supervisor"] if report.supervisor_pid else []), *report.stopped]
        killed = f"; had to SIGKILL {', '.join(report.killed)}" if report.killed else ""
        return True, f"stopped {', '.join(stopped) or 'nothing'}{killed}"

    async def restart_all(self) -> tuple[bool, str]:
        ok, out = await self.stop()
        return await self.start() if ok else (ok, out)

    def restart(self, name: str) -> tuple[bool, str]:
        """SIGTERM one supervised daemon; its supervisor starts it again (with backoff)."""
        state = StateStore(self.state_dir).read()
        record = state.find(name) if state is not None else None
        if state is None or record is None or not state.supervisor_alive():
            return False, f"{name} has no supervisor here: restart it where it was started"
        if record.pid is None or not record.alive():
            return False, f"{name} is not running ({record.state}); its supervisor restarts it"
        os.kill(record.pid, signal.SIGTERM)
        return True, f"stopped {name} (pid {record.pid}); its supervisor starts it again"


class DashApp(App[None]):
    """``DashApp(poller=...)`` is live; ``DashApp(snapshot=...)`` shows one fixed snapshot."""

    CSS_PATH = "dash.tcss"
    TITLE = "duplex"
    SUB_TITLE = "dash"

    BINDINGS: ClassVar[list[BindingType]] = [Binding("q", "quit", "Quit")]

    def __init__(
        self,
        *,
        poller: Poller | None = None,
        control: DaemonControl | None = None,
        snapshot: Snapshot | None = None,
        interval_s: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.poller = poller
        self.control = control
        self.clock = clock
        self._snapshot = snapshot
        self._interval_s = interval_s

    def get_default_screen(self) -> DashScreen:
        return DashScreen(
            poller=self.poller,
            control=self.control,
            snapshot=self._snapshot,
            interval_s=self._interval_s,
            clock=self.clock,
        )

    async def on_unmount(self) -> None:
        if self.poller is not None:
            await self.poller.aclose()

    @property
    def dashboard(self) -> DashScreen:
        return next(s for s in self.screen_stack if isinstance(s, DashScreen))
