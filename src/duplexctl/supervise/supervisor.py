"""The supervisor: owns every `SupervisedProc`, keeps state.json current, stops all on exit.

`serve()` is the whole life of a supervisor, shared by `duplexctl up` (in the foreground) and
`python -m duplexctl.supervise.run` (the detached one): start the workers (together), then the
orchestrator, report ready, watch until SIGINT/SIGTERM/SIGHUP, then stop the orchestrator
first and the workers after it, so no session is routed to a worker that is going away.

Nothing is left behind: signals end the loop gracefully; an `atexit` hook SIGKILLs whatever a
crash of the supervisor itself would otherwise orphan.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Sequence

from duplexctl.supervise.health import Pinger
from duplexctl.supervise.proc import SupervisedProc, Timing, log
from duplexctl.supervise.spec import DaemonSpec
from duplexctl.supervise.state import FleetState, StateStore, process_created
from duplexd.errors import DuplexError

__all__ = ["Supervisor", "serve"]

OnReady = Callable[[FleetState], Awaitable[None]]


class Supervisor:
    """A set of daemons started, watched and stopped together."""

    def __init__(
        self, specs: Sequence[DaemonSpec], store: StateStore, *, timing: Timing | None = None
    ) -> None:
        self.store = store
        self.timing = timing or Timing()
        self._pinger = Pinger(self.timing.ping_timeout_s)
        self.procs = [
            SupervisedProc(s, self._pinger, timing=self.timing, on_change=self._save) for s in specs
        ]
        pid = os.getpid()
        self.state = FleetState(supervisor_pid=pid, supervisor_created=process_created(pid))
        self._watchers: list[asyncio.Task[None]] = []
        atexit.register(self._kill_all)

    async def start(self) -> None:
        """Start in order (workers, then the orchestrator); on any failure stop all and raise."""
        self._save()
        try:
            for group in (self._kind("worker"), self._kind("orchestrator")):
                await self._start_group(group)
        except DuplexError as exc:
            self.state.error, self.state.hint = exc.message, exc.hint
            raise
        self.state.phase = "ready"
        self._save()
        for proc in self.procs:
            self._watchers.append(asyncio.create_task(proc.run(), name=f"watch-{proc.spec.name}"))

    async def _start_group(self, group: Sequence[SupervisedProc]) -> None:
        results = await asyncio.gather(*(p.start() for p in group), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def aclose(self) -> None:
        """Stop watching, then stop the orchestrator, then the workers (gracefully)."""
        if self.state.phase != "failed":
            self.state.phase = "stopping"
        self._save()
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._watchers.clear()
        for group in (self._kind("orchestrator"), self._kind("worker")):
            await asyncio.gather(*(p.aclose() for p in group))
        await self._pinger.aclose()
        atexit.unregister(self._kill_all)

    def _kind(self, kind: str) -> list[SupervisedProc]:
        return [p for p in self.procs if p.spec.kind == kind]

    def _save(self) -> None:
        self.state.daemons = [p.record for p in self.procs]
        try:
            self.store.write(self.state)
        except OSError as exc:  # a full disk must not take the daemons down with it
            log().error("cannot write state", path=str(self.store.state_file), error=str(exc))

    def _kill_all(self) -> None:
        for proc in self.procs:
            proc.kill_now()


async def serve(
    specs: Sequence[DaemonSpec],
    store: StateStore,
    *,
    timing: Timing | None = None,
    on_ready: OnReady | None = None,
) -> None:
    """Run a supervisor until a stop signal. Start failures raise (state.json says why)."""
    # Children exec at once, so gRPC's fork handlers (for our pings) only add noise to logs.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    sup = Supervisor(specs, store, timing=timing)
    try:
        if await _start_unless_stopped(sup, stop):
            if on_ready is not None:
                await on_ready(sup.state)
            await stop.wait()
            log().info("stopping", reason="signal")
    except BaseException as exc:
        sup.state.phase = "failed"
        sup.state.error = sup.state.error or f"{type(exc).__name__}: {exc}"
        raise
    finally:
        await sup.aclose()
        for sig in signals:
            loop.remove_signal_handler(sig)
    store.clear()


async def _start_unless_stopped(sup: Supervisor, stop: asyncio.Event) -> bool:
    """Start all; a stop signal during the (slow) start cancels it. True when started."""
    starting = asyncio.create_task(sup.start(), name="supervisor-start")
    stopping = asyncio.create_task(stop.wait(), name="supervisor-stop")
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if starting.done():
        starting.result()  # re-raise a start failure
        return True
    starting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await starting
    return False
