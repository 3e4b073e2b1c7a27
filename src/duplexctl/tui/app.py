"""`DashApp`: the operator's live view of the daemons, and the hands to start and steer them.

The app is thin: it builds the `Poller` (data.py) and a `DaemonControl`, pushes the dashboard
screen and closes the poller's connections on the way out. Everything time-dependent reads
`clock`, so snapshot tests freeze it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from textual.app import App
from textual.binding import Binding, BindingType

from duplexctl.supervise.state import StateStore
from duplexctl.tui.data import Poller, Snapshot
from duplexctl.tui.screens.dashboard import DashScreen

__all__ = ["DaemonControl", "DashApp"]


class DaemonControl:
    """Start and stop the fleet through `duplexctl up --detach` / `down` subprocesses.

    The console commands already know how to spawn, wait for and stop a supervisor; running
    them keeps one implementation. `argv` is the command prefix (tests point it elsewhere).
    """

    def __init__(
        self,
        *,
        state_dir: Path | None = None,
        argv: Sequence[str] = (sys.executable, "-m", "duplexctl"),
        timeout_s: float = 300.0,
    ) -> None:
        self.state_dir = state_dir
        self.argv = tuple(argv)
        self.timeout_s = timeout_s

    async def start(self) -> tuple[bool, str]:
        return await self.run("up", "--detach")

    async def stop(self) -> tuple[bool, str]:
        return await self.run("down")

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

    async def run(self, *args: str) -> tuple[bool, str]:
        """Run one `duplexctl` command; (succeeded, its last lines of output)."""
        env = dict(os.environ)
        if self.state_dir is not None:
            env["DUPLEX_STATE_DIR"] = str(self.state_dir)
        env["COLUMNS"] = "100"
        proc = await asyncio.create_subprocess_exec(
            *self.argv,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return False, f"duplexctl {' '.join(args)}: no result after {self.timeout_s:g} s"
        lines = out.decode(errors="replace").strip().splitlines()[-6:]
        summary = "\n".join(lines) or f"exit code {proc.returncode}"
        return proc.returncode == 0, f"duplexctl {' '.join(args)}: {summary}"


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
