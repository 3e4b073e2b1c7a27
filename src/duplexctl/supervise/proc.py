"""One supervised daemon process, modelled on LiveKit's ``ipc/supervised_proc.py``.

Lifecycle: `start()` launches the process and waits for its ready file (an early exit or a
timeout raises `DaemonStartError` carrying the log's tail); `run()` then watches it: it pings
every `ping_interval_s`, warns on a slow pong, kills a daemon that stops answering, and
restarts a dead one with exponential backoff; `aclose()` stops it: SIGTERM (the daemons drain
on it) → `stop_grace_s` → SIGKILL of its whole process group.

Each daemon runs in its own session (``start_new_session``), so a Ctrl-C in the terminal
reaches only the supervisor, which then stops the daemons in order instead of all of them
dying at once. On Linux the child also asks the kernel for SIGTERM if the supervisor dies
without cleaning up (PR_SET_PDEATHSIG), so even a SIGKILLed supervisor leaves no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from duplexctl.supervise.health import Pinger
from duplexctl.supervise.logs import marker_line
from duplexctl.supervise.spec import DaemonSpec
from duplexctl.supervise.state import DaemonRecord, process_created
from duplexd.errors import DaemonUnavailable, DuplexError
from duplexd.launch import Launched, LaunchError, LaunchSpec, launch, log_tail
from duplexd.logging import get_logger

__all__ = ["DaemonStartError", "SupervisedProc", "Timing", "log", "log_tail"]


def log() -> Any:
    """Looked up per call: a logger bound at import would miss `configure_logging` run later."""
    return get_logger("duplexctl.supervise")


class DaemonStartError(LaunchError):
    """A supervised daemon exited or hung before reporting ready (with its log tail)."""

    exit_code = 1


@dataclass(frozen=True)
class Timing:
    """Every delay the supervisor uses, in one place (tests shorten them)."""

    ready_timeout_s: float = 120.0  # first start of a worker loads and warms its default model
    ping_interval_s: float = 2.0
    ping_timeout_s: float = 1.0
    slow_pong_s: float = 0.5  # warn above this
    unresponsive_s: float = 30.0  # no pong this long: kill it (and restart)
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    backoff_reset_s: float = 60.0  # up this long: the next crash starts from the initial backoff
    stop_grace_s: float = 5.0


class SupervisedProc:
    """Start, watch, restart and stop one daemon; `record` is what state.json shows of it."""

    def __init__(
        self,
        spec: DaemonSpec,
        pinger: Pinger,
        *,
        timing: Timing | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.spec = spec
        self.timing = timing or Timing()
        self._pinger = pinger
        self._on_change = on_change
        self._proc: Launched | None = None
        self._closing = asyncio.Event()
        self.record = DaemonRecord(
            name=spec.name, kind=spec.kind, log=str(spec.log_file), addr=spec.addr
        )

    # -- starting ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Launch and wait until ready; raises DaemonStartError (the process is gone then)."""
        self._set(state="starting")
        self._proc = launch(LaunchSpec(
            self.spec.kind, argv=self.spec.argv, ready_file=self.spec.ready_file,
            log_file=self.spec.log_file, env=dict(self.spec.env), die_with_us=True,
            log_marker=_marker(self.spec, self.record.restarts),
        ))  # fmt: skip
        self._set(pid=self._proc.pid, pid_created=process_created(self._proc.pid))
        try:
            info = await self._wait_ready(self._proc)
        except BaseException:
            await self._terminate()
            raise
        self._set(
            state="running",
            addr=str(info.get("addr") or self.spec.addr),
            metrics_port=info.get("metrics_port"),
            started_at=time.time(),
        )
        log().info("daemon ready", daemon=self.spec.name, pid=self._proc.pid, addr=self.record.addr)

    async def _wait_ready(self, proc: Launched) -> dict[str, Any]:
        deadline = time.monotonic() + self.timing.ready_timeout_s
        while (info := proc.info()) is None:
            if proc.returncode is not None:
                raise self._start_error(f"exited with code {proc.returncode} before it was ready")
            if time.monotonic() > deadline:
                raise self._start_error(f"not ready after {self.timing.ready_timeout_s:g} s")
            await asyncio.sleep(0.05)
        return info

    def _start_error(self, what: str) -> DaemonStartError:
        tail = log_tail(self.spec.log_file)
        if "No such command" in tail and self.spec.kind == "orchestrator":
            return DaemonStartError(
                "this duplexd has no `orchestrator` command",
                hint="start workers only: `duplexctl up --no-orchestrator`",
            )
        return DaemonStartError(
            f"{self.spec.name} {what}; last lines of {self.spec.log_file}:\n{tail}",
            hint=f"full log: `duplexctl logs {self.spec.name}`",
        )

    # -- watching ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Watch until closed: restart after every exit, backing off while it keeps failing."""
        backoff = self.timing.backoff_initial_s
        while not self._closing.is_set():
            code = await self._watch()
            if self._closing.is_set():
                return
            up_s = time.time() - (self.record.started_at or time.time())
            if up_s >= self.timing.backoff_reset_s:
                backoff = self.timing.backoff_initial_s
            self._set(state="restarting", last_exit=code, pid=None, pid_created=None)
            log().warning("daemon exited", daemon=self.spec.name, code=code, restart_in_s=backoff)
            backoff = await self._restart(backoff)

    async def _restart(self, backoff: float) -> float:
        """Sleep, start again; repeat with a doubled delay while starts fail."""
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), backoff)
                return backoff  # closed while waiting
            backoff = min(backoff * 2, self.timing.backoff_max_s)
            self._set(restarts=self.record.restarts + 1)
            try:
                await self.start()
                return backoff
            except (DuplexError, OSError) as exc:
                self._set(state="restarting", pid=None, pid_created=None)
                log().error("restart failed", daemon=self.spec.name, error=str(exc))
        return backoff

    async def _watch(self) -> int:
        """Wait for the process to exit, pinging it meanwhile; returns its exit code."""
        proc = self._proc
        assert proc is not None
        last_pong = time.monotonic()
        while True:
            if (code := await proc.wait(self.timing.ping_interval_s)) is not None:
                return code
            if await self._ping():
                last_pong = time.monotonic()
            elif time.monotonic() - last_pong > self.timing.unresponsive_s:
                log().error("daemon unresponsive, killing it", daemon=self.spec.name)
                proc.kill_group()

    async def _ping(self) -> bool:
        try:
            ms = await self._pinger.ping(self.spec.kind, self.record.addr)
        except DaemonUnavailable as exc:
            log().warning("missed ping", daemon=self.spec.name, error=exc.message)
            return False
        if ms > self.timing.slow_pong_s * 1000:
            log().warning("slow pong", daemon=self.spec.name, ms=round(ms, 1))
        return True

    # -- stopping ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop for good: no more restarts; SIGTERM → grace → SIGKILL."""
        self._closing.set()
        await self._terminate()
        self._set(state="stopped", pid=None, pid_created=None)

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            self._set(state="stopping")
            code, killed = await proc.astop(self.timing.stop_grace_s)
            if killed:
                log().warning("daemon ignored SIGTERM, killed it", daemon=self.spec.name)
            log().info("daemon stopped", daemon=self.spec.name, code=code)
        proc.kill_group()  # helpers it started (espeak-ng …) go with it

    def kill_now(self) -> None:
        """Last resort from atexit/signal context: no event loop, no waiting."""
        if self._proc is not None:
            self._proc.kill_group()

    def _set(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self.record, key, value)
        self._on_change()


def _marker(spec: DaemonSpec, restarts: int) -> bytes:
    """A JSON line in the daemon's log where each run starts, so restarts are easy to find
    (and `duplexctl logs` and the dashboard know where the current run begins)."""
    return marker_line(spec.name, restarts)
