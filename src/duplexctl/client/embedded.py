"""The embedded default on demand: one worker and one orchestrator, started and stopped by us.

`talk`, `demo` and `bench` want "the stack the user already runs, else a private one for the
length of this command". `orchestrator_for(url)` is that rule: an explicit address (or the name
of a daemon `duplexctl up` started) is used as it is (an unreachable one is the user's error to
see, not a cue to start something else); with none, the orchestrator `duplexctl up` started is
used, whatever its port; else the default address is probed and, if nothing answers, an
`EmbeddedStack` is started.

The stack is two child processes (`python -m duplexd worker|orchestrator --port 0`) that report
their ports through ready files, so it never clashes with a stack already on the default ports.
Whatever happens — an error, Ctrl-C, SIGTERM to us — both are stopped on exit: SIGTERM, a grace
period, then SIGKILL. Usable as ``with`` and as ``async with``; both yield the orchestrator's
``HOST:PORT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from duplexd.errors import DaemonUnavailable
from duplexd.launch import Launched, LaunchSpec, launch

__all__ = [
    "DEFAULT_ORCHESTRATOR",
    "EmbeddedStack",
    "embedded_stack",
    "orchestrator_for",
    "probe",
    "running_orchestrator",
]

DEFAULT_ORCHESTRATOR = "127.0.0.1:8080"
_GRACE_S = 5.0


def probe(addr: str, timeout_s: float = 0.5) -> bool:
    """True when an orchestrator answers ``GET /healthz`` at `addr` (HOST:PORT)."""
    try:
        with urllib.request.urlopen(f"http://{addr}/healthz", timeout=timeout_s) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError, ValueError):
        return False


class EmbeddedStack:
    """A private worker + orchestrator (see the module docstring).

    `workdir` holds the ready files and the daemons' logs; without one a temporary folder is
    used and removed on exit.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        worker_args: Sequence[str] = (),
        orchestrator_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.gettempdir())  # a private folder at start()
        self.worker_args = list(worker_args)
        self.orchestrator_args = list(orchestrator_args)
        self.env = {**os.environ, **(env or {})}
        self.timeout_s = timeout_s
        self.addr = ""
        self.children: list[Launched] = []
        self._lock = threading.Lock()  # start() may still run in a thread while stop() runs
        self._stopping = False
        self._old_sigterm: Any = None
        self._loop_trap: asyncio.AbstractEventLoop | None = None

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.children]

    # -- sync and async context manager ----------------------------------------------------

    def __enter__(self) -> str:
        self._trap_sigterm()
        try:
            return self.start()
        except BaseException:  # Ctrl-C, SIGTERM or a failed start: no orphans
            self.stop()
            raise

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> str:
        self._trap_sigterm_async()
        try:
            return await asyncio.to_thread(self.start)
        except BaseException:  # cancelled while starting: stop() also ends a start() in flight
            await asyncio.shield(asyncio.to_thread(self._stop_children))
            self._untrap()
            raise

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await asyncio.shield(asyncio.to_thread(self._stop_children))
        finally:
            self._untrap()

    # -- start and stop ----------------------------------------------------------------------

    def start(self) -> str:
        """Start both daemons at once (the worker's port is chosen first) and wait for ready."""
        if self._own_dir:
            self.workdir = Path(tempfile.mkdtemp(prefix="duplex-embedded-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        worker_port = _free_port()
        worker = self._spawn(
            "worker",
            ["--port", str(worker_port), "--metrics-port", str(_free_port()), *self.worker_args],
        )
        orch = self._spawn(
            "orchestrator",
            ["--port", "0", "--worker", f"tts-worker@0=127.0.0.1:{worker_port}",
             *self.orchestrator_args],
        )  # fmt: skip
        deadline = time.monotonic() + self.timeout_s
        self._wait_ready(worker, deadline)
        info = self._wait_ready(orch, deadline)
        self.addr = str(info["addr"])
        self._wait_worker_resident(deadline)
        return self.addr

    def stop(self) -> None:
        """SIGTERM to each child, then SIGKILL after the grace period; idempotent."""
        self._stop_children()
        self._untrap()

    def _stop_children(self) -> None:
        with self._lock:
            self._stopping = True
            children = list(self.children)
        for child in children:  # both drain at once, then each gets what is left of the grace
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + _GRACE_S
        for child in children:
            child.stop(max(deadline - time.monotonic(), 0.01))
        if self._own_dir and self.workdir.name.startswith("duplex-embedded-"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _spawn(self, kind: str, args: list[str]) -> Launched:
        log_file = self.workdir / f"{kind}.log"
        log_file.unlink(missing_ok=True)
        # Same process group as us: a Ctrl-C reaches them too, and they drain on it.
        spec = LaunchSpec(kind, args, ready_file=self.workdir / f"{kind}.ready.json",
                          log_file=log_file, env=self.env, own_group=False)  # fmt: skip
        with self._lock:
            if self._stopping:
                raise DaemonUnavailable("the embedded stack was stopped while starting")
            child = launch(spec)
            self.children.append(child)
        return child

    def _wait_ready(self, child: Launched, deadline: float) -> dict[str, Any]:
        kind = child.spec.kind
        while (info := child.info()) is None:
            if child.returncode is not None:
                raise DaemonUnavailable(
                    f"the embedded {kind} exited with {child.returncode}:\n{child.log(30)}",
                    hint=f"full log: {child.spec.log_file}",
                )
            if time.monotonic() > deadline or self._stopping:
                raise DaemonUnavailable(f"the embedded {kind} was not ready in time")
            time.sleep(0.05)
        return info

    def _wait_worker_resident(self, deadline: float) -> None:
        """The orchestrator polls its worker; /readyz says when a session would find it."""
        while time.monotonic() < deadline and not self._stopping:
            try:
                with urllib.request.urlopen(f"http://{self.addr}/readyz", timeout=1.0):
                    return
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        raise DaemonUnavailable("the embedded orchestrator never saw its worker ready")

    # -- SIGTERM: unwind (and stop the children) instead of dying with them alive ---------
    # Sync use: SIGTERM raises SystemExit, so `with` blocks run. Async use: it cancels the
    # task that entered, so `async with` blocks run (an exception raised from a signal
    # handler in the middle of the event loop would skip them).

    def _trap_sigterm(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _raise_exit)

    def _trap_sigterm_async(self) -> None:
        task = asyncio.current_task()
        if threading.current_thread() is not threading.main_thread() or task is None:
            return
        loop = asyncio.get_running_loop()
        self._old_sigterm = signal.getsignal(signal.SIGTERM)
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        self._loop_trap = loop

    def _untrap(self) -> None:
        if self._old_sigterm is None or threading.current_thread() is not threading.main_thread():
            return
        if self._loop_trap is not None:
            self._loop_trap.remove_signal_handler(signal.SIGTERM)
            self._loop_trap = None
        signal.signal(signal.SIGTERM, self._old_sigterm)
        self._old_sigterm = None


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def embedded_stack(workdir: Path | None = None, **kwargs: Any) -> EmbeddedStack:
    """``with embedded_stack() as addr:`` (or ``async with``): a private stack at `addr`."""
    return EmbeddedStack(workdir, **kwargs)


def running_orchestrator(url: str | None) -> str | None:
    """The orchestrator already there for `url` (see the module docstring), or None when a
    private stack is needed. An unknown daemon name raises InvalidArgument."""
    from duplexctl.client.fleet import resolve_orchestrator

    if url:
        return resolve_orchestrator(url)
    started = resolve_orchestrator(None)  # by `duplexctl up`, on any port
    if started is not None:
        return started
    return DEFAULT_ORCHESTRATOR if probe(DEFAULT_ORCHESTRATOR) else None


@contextlib.contextmanager
def orchestrator_for(
    url: str | None, *, on_start: Any = None, workdir: Path | None = None
) -> Iterator[str]:
    """The orchestrator to talk to (`running_orchestrator`), else an embedded stack for the
    duration of the block (`on_start()` is called before it starts, so a command can say why
    it pauses)."""
    addr = running_orchestrator(url)
    if addr is not None:
        yield addr
        return
    if on_start is not None:
        on_start()
    with EmbeddedStack(workdir) as addr:
        yield addr
