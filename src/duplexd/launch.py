"""The one way to launch a daemon process: `duplexd KIND … --ready-file F`, wait, stop.

Used by `duplexctl up`'s supervisor, the embedded stack of `say` / `talk` / `bench` / `demo`,
`duplexctl worker join`, the dashboard (through the supervisor) and the tests (devkit.procs).

- `launch(spec)` starts the process: its own process group (so helpers it starts, such as
  espeak-ng, stop with it), optionally SIGTERMed by Linux when we die (PR_SET_PDEATHSIG), output
  appended to a log file (or inherited).
- `Launched.wait_ready()` / `await Launched.ready()` poll the ready file the daemon writes once
  it serves (its real ports: `--port 0` works); an early exit or a timeout raises
  `LaunchError` with the log's last lines.
- `Launched.stop()` / `await Launched.astop()`: SIGTERM (the daemons drain on it), a grace
  period, then SIGKILL to the whole group. Idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from duplexd.errors import DuplexError

__all__ = ["LaunchError", "LaunchSpec", "Launched", "launch", "log_tail"]

_POLL_S = 0.05


class LaunchError(DuplexError):
    """A daemon exited or hung before reporting ready; the message ends with its log tail."""

    status = "UNAVAILABLE"


@dataclass
class LaunchSpec:
    kind: str  # worker | orchestrator
    args: Sequence[str] = ()
    ready_file: Path | None = None  # None: not waited for (--ready-file not passed)
    log_file: Path | None = None  # None: inherit our stdout/stderr
    env: dict[str, str] = field(default_factory=dict)  # on top of os.environ
    python: Path | None = None  # another environment's interpreter (an engine env)
    argv: Sequence[str] | None = None  # the whole command line, when not `duplexd KIND`
    own_group: bool = True  # its own session: Ctrl-C here does not reach it; killpg works
    # Linux: SIGTERM it if we die without cleaning up. The kernel ties this to the *thread*
    # that launched it: only for launches from a thread that lives as long as the process.
    die_with_us: bool = False
    log_marker: bytes = b""  # written to the log before the daemon's own lines

    def command(self) -> list[str]:
        if self.argv is not None:
            return list(self.argv)
        cmd = [str(self.python or sys.executable), "-m", "duplexd", self.kind]
        if self.ready_file is not None:
            cmd += ["--ready-file", str(self.ready_file)]
        return cmd + list(self.args)


def log_tail(path: os.PathLike[str] | str, lines: int = 20) -> str:
    """The last lines of a log file ("" when there is none); reads only its last 16 KiB."""
    try:
        with open(path, "rb") as fh:  # noqa: PTH123  # seek on a binary handle
            fh.seek(0, os.SEEK_END)
            fh.seek(max(fh.tell() - 16_384, 0))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Launched:
    """A started daemon process."""

    def __init__(self, spec: LaunchSpec, proc: subprocess.Popen[bytes]) -> None:
        self.spec, self.proc = spec, proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def info(self) -> dict[str, Any] | None:
        """What the daemon wrote to its ready file (addr, port, pid …), once it serves."""
        ready = self.spec.ready_file
        if ready is None or not ready.exists():
            return None
        data: dict[str, Any] = json.loads(ready.read_text())
        return data

    def log(self, lines: int = 20) -> str:
        return log_tail(self.spec.log_file, lines) if self.spec.log_file else ""

    def _check(self, started: float, timeout_s: float) -> dict[str, Any] | None:
        info = self.info()
        if info is not None:
            return info
        if self.proc.poll() is not None:
            raise self.error(f"exited with code {self.proc.returncode} before it was ready")
        if time.monotonic() - started > timeout_s:
            raise self.error(f"was not ready after {timeout_s:g} s")
        return None

    def error(self, what: str) -> LaunchError:
        where = f"; last lines of {self.spec.log_file}:\n{self.log()}" if self.spec.log_file else ""
        return LaunchError(f"duplexd {self.spec.kind} {what}{where}")

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        """Block until the ready file appears; on failure the process is stopped."""
        started = time.monotonic()
        try:
            while (info := self._check(started, timeout_s)) is None:
                time.sleep(_POLL_S)
        except BaseException:
            self.stop()
            raise
        return info

    async def ready(self, timeout_s: float) -> dict[str, Any]:
        """`wait_ready` for an event loop."""
        started = time.monotonic()
        try:
            while (info := self._check(started, timeout_s)) is None:  # noqa: ASYNC110  # a file
                await asyncio.sleep(_POLL_S)
        except BaseException:
            await self.astop()
            raise
        return info

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def kill_group(self) -> None:
        """SIGKILL the process and everything it started (no waiting: safe anywhere)."""
        if self.spec.own_group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: pgid == pid
        else:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def stop(self, grace_s: float = 10.0) -> int:
        """SIGTERM, up to `grace_s` to drain, then SIGKILL; returns the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.kill_group()
                self.proc.wait()
        if self.spec.own_group:
            self.kill_group()  # helpers it started go with it
        return self.proc.returncode

    async def astop(self, grace_s: float = 10.0) -> tuple[int, bool]:
        """`stop` for an event loop; (exit code, whether it had to be killed)."""
        killed = False
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            if await self.wait(grace_s) is None:
                killed = True
                self.kill_group()
                await self.wait()
        if self.spec.own_group:
            self.kill_group()
        return self.proc.returncode, killed

    async def wait(self, timeout_s: float | None = None) -> int | None:
        """Its exit code once it exits, or None when `timeout_s` passes first."""
        try:
            return await asyncio.to_thread(self.proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            return None


def launch(spec: LaunchSpec) -> Launched:
    """Start the daemon (see module doc); returns at once."""
    if spec.ready_file is not None:
        spec.ready_file.parent.mkdir(parents=True, exist_ok=True)
        spec.ready_file.unlink(missing_ok=True)
    env = {**os.environ, **spec.env}
    preexec = _pdeathsig_hook() if spec.die_with_us else None
    if spec.log_file is None:
        proc = subprocess.Popen(
            spec.command(), env=env, start_new_session=spec.own_group,
            preexec_fn=preexec,  # noqa: PLW1509  # one prctl call, nothing that locks
        )  # fmt: skip
        return Launched(spec, proc)
    spec.log_file.parent.mkdir(parents=True, exist_ok=True)
    with spec.log_file.open("ab") as out:
        if spec.log_marker:
            out.write(spec.log_marker)
            out.flush()
        proc = subprocess.Popen(
            spec.command(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=env, start_new_session=spec.own_group,
            preexec_fn=preexec,  # noqa: PLW1509  # one prctl call, nothing that locks
        )  # fmt: skip
    return Launched(spec, proc)


def _pdeathsig_hook() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when we die.

    libc is looked up here, in the parent: importing or loading anything in the forked child
    of a threaded process can deadlock on a lock another thread held at fork time.
    """
    if sys.platform != "linux":
        return None
    import ctypes  # Linux only

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def hook() -> None:  # pragma: no cover  # runs in the forked child
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return hook
