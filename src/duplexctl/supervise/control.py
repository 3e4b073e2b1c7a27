"""The console's side of supervision: spawn a detached supervisor, wait for it, probe, stop.

These run in the short-lived `duplexctl up --detach / status / down` processes and talk to the
supervisor only through state.json and signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from duplexctl.supervise.health import Pinger
from duplexctl.supervise.proc import DaemonStartError, log_tail
from duplexctl.supervise.spec import DaemonSpec, UpOptions, check_ports, plan_daemons, save_plan
from duplexctl.supervise.state import DaemonRecord, FleetState, StateStore, same_process
from duplexd.errors import DaemonUnavailable, DuplexError

__all__ = [
    "DaemonStatus",
    "StopReport",
    "probe",
    "refuse_if_running",
    "spawn_detached",
    "start_fleet",
    "stop_fleet",
    "stop_leftovers",
    "wait_until_ready",
]


def refuse_if_running(store: StateStore) -> list[str]:
    """One supervisor per state dir: raise if one runs; a dead one's leftovers are stopped
    (their names are returned) and its state cleared."""
    state = store.read()
    if state is None:
        return []
    if state.supervisor_alive():
        raise DuplexError(
            f"duplex is already running (supervisor pid {state.supervisor_pid})",
            hint="`duplexctl status` shows it, `duplexctl down` stops it",
        )
    left = stop_leftovers(state.daemons)
    store.clear()
    return left.stopped


def start_fleet(store: StateStore, opts: UpOptions, *, timeout_s: float) -> FleetState:
    """`duplexctl up --detach` in-process (the CLI and the dashboard): plan the daemons, check
    their ports, start a detached supervisor and wait until every daemon is ready."""
    refuse_if_running(store)
    specs = plan_daemons(opts, store)
    check_ports(specs, opts.base_port)
    store.ensure()
    proc = spawn_detached(store, specs, ready_timeout_s=timeout_s)
    # Workers start together, the orchestrator after them: two ready waits at most.
    return wait_until_ready(store, proc, 2 * timeout_s + 15)


def spawn_detached(
    store: StateStore, specs: Sequence[DaemonSpec], *, ready_timeout_s: float
) -> subprocess.Popen[bytes]:
    """Start ``python -m duplexctl.supervise.run`` in its own session, output to its log."""
    plan = save_plan(store, specs)
    store.state_file.unlink(missing_ok=True)  # so the next state.json read is the new one's
    argv = [sys.executable, "-m", "duplexctl.supervise.run", "--state-dir", str(store.root)]
    argv += ["--plan", str(plan), "--ready-timeout", str(ready_timeout_s)]
    with store.supervisor_log.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this terminal; Ctrl-C here never reaches it
        )


def wait_until_ready(
    store: StateStore, proc: subprocess.Popen[bytes], timeout_s: float
) -> FleetState:
    """Poll state.json until the supervisor says "ready"; raise with its reason otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = store.read()
        ours = state if state is not None and state.supervisor_pid == proc.pid else None
        if ours is not None and ours.phase == "ready":
            return ours
        if proc.poll() is not None:  # it wrote its last state before exiting
            store.clear()
            if ours is not None and ours.error:
                raise DaemonStartError(ours.error, hint=ours.hint)
            raise DaemonStartError(
                f"the supervisor exited with code {proc.returncode}; last lines of "
                f"{store.supervisor_log}:\n{log_tail(store.supervisor_log)}"
            )
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # it stops what it started
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(30)
    store.clear()
    raise DaemonStartError(
        f"not ready after {timeout_s:g} s", hint="see `duplexctl logs` for what each daemon did"
    )


# -- status ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DaemonStatus:
    """One row of `duplexctl status`: the record plus what we see of it right now."""

    record: DaemonRecord
    state: str
    uptime_s: float | None
    ping_ms: float | None
    ping_error: str | None = None


async def probe(state: FleetState, timeout_s: float = 1.0) -> list[DaemonStatus]:
    """Ping every daemon at once (a dead one costs at most `timeout_s`)."""
    supervised = state.supervisor_alive()
    async with Pinger(timeout_s) as pinger:
        return list(
            await asyncio.gather(*(_probe_one(pinger, d, supervised) for d in state.daemons))
        )


async def _probe_one(pinger: Pinger, record: DaemonRecord, supervised: bool) -> DaemonStatus:
    alive = record.alive()
    shown = record.state if supervised else ("orphaned" if alive else "dead")
    uptime = time.time() - record.started_at if alive and record.started_at else None
    if not alive:
        return DaemonStatus(record, shown, None, None)
    try:
        ms = await pinger.ping(record.kind, record.addr)
    except DuplexError as exc:
        return DaemonStatus(record, shown, uptime, None, exc.message)
    return DaemonStatus(record, shown, uptime, ms)


# -- stopping ----------------------------------------------------------------------------------


@dataclass
class StopReport:
    supervisor_pid: int | None = None  # the supervisor we stopped, if it was alive
    stopped: list[str] = field(default_factory=list)  # daemons we had to stop ourselves
    killed: list[str] = field(default_factory=list)  # ...of which SIGKILL was needed


def stop_fleet(store: StateStore, *, grace_s: float = 5.0) -> StopReport | None:
    """Stop the supervisor (it stops its daemons), then any daemon it left. None: nothing ran."""
    state = store.read()
    if state is None:
        return None
    report = StopReport()
    if state.supervisor_alive():
        report.supervisor_pid = state.supervisor_pid
        # The supervisor stops the orchestrator, then the workers, each with its own grace.
        if not _stop_pid(state.supervisor_pid, state.supervisor_created, 4 * grace_s + 5):
            report.killed.append("supervisor")
    latest = store.read() or state  # a supervisor killed mid-way leaves its freshest pids here
    leftovers = stop_leftovers([*latest.daemons, *state.daemons], grace_s=grace_s)
    report.stopped, report.killed = leftovers.stopped, [*report.killed, *leftovers.killed]
    store.clear()
    return report


def stop_leftovers(records: Sequence[DaemonRecord], *, grace_s: float = 5.0) -> StopReport:
    """Stop daemons whose supervisor is gone: SIGTERM → grace → SIGKILL of the group."""
    report = StopReport()
    seen: set[int] = set()
    for record in records:
        if record.pid is None or record.pid in seen or not record.alive():
            continue
        seen.add(record.pid)
        report.stopped.append(record.name)
        if not _stop_pid(record.pid, record.pid_created, grace_s, group=True):
            report.killed.append(record.name)
    return report


def _stop_pid(pid: int, created: float | None, grace_s: float, *, group: bool = False) -> bool:
    """SIGTERM, wait, SIGKILL. True when it exited on SIGTERM."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, created, grace_s):
        _kill_group(pid, group)  # sweep helpers left in its group
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _kill_group(pid, group)
    if not _wait_gone(pid, created, 5.0):
        raise DaemonUnavailable(f"process {pid} survived SIGKILL")
    return False


def _kill_group(pid: int, group: bool) -> None:
    if group:  # our daemons lead their own session, so their pgid is their pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _wait_gone(pid: int, created: float | None, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while same_process(pid, created):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
