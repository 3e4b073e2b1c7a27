"""What the supervisor leaves on disk for `status`, `down`, `logs` and the fleet resolver.

One directory per user (``platformdirs.user_state_dir("duplex")``, or ``$DUPLEX_STATE_DIR``):

    state.json       the supervisor's view, rewritten atomically on every change
    plan.json        the daemons `up` asked for (read by a detached supervisor)
    supervisor.log   a detached supervisor's own output
    logs/NAME.log    each daemon's stdout+stderr (JSON lines), appended across restarts
    run/NAME.ready   each daemon's ready file

Pids are stored with their process creation time, so a pid the kernel has reused for
something else is never signalled.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DaemonRecord",
    "FleetState",
    "StateStore",
    "default_state_dir",
    "process_created",
    "same_process",
]

_STATE_VERSION = 1


def default_state_dir() -> Path:
    """``$DUPLEX_STATE_DIR``, else the platform's per-user state directory for duplex."""
    env = os.environ.get("DUPLEX_STATE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_state_dir  # only when the env is unset

    return Path(user_state_dir("duplex"))


def process_created(pid: int) -> float | None:
    """Creation time of a live (non-zombie) process, None when it is gone."""
    import psutil  # keeps `duplexctl --help` from importing it

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:  # exited, only waiting to be reaped
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def same_process(pid: int | None, created: float | None) -> bool:
    """True when `pid` still names the process that was started at `created`."""
    if not pid:
        return False
    now_created = process_created(pid)
    if now_created is None:
        return False
    return created is None or abs(now_created - created) < 1.0


@dataclass
class DaemonRecord:
    """One daemon as the supervisor last saw it."""

    name: str
    kind: str  # "worker" | "orchestrator"
    log: str
    addr: str = ""
    pid: int | None = None
    pid_created: float | None = None
    metrics_port: int | None = None
    started_at: float | None = None  # unix time of the current run's start
    restarts: int = 0
    state: str = "starting"  # starting | running | restarting | stopping | stopped | failed
    last_exit: int | None = None

    def alive(self) -> bool:
        return same_process(self.pid, self.pid_created)


@dataclass
class FleetState:
    """The whole of state.json."""

    supervisor_pid: int
    supervisor_created: float | None = None
    phase: str = "starting"  # starting | ready | stopping | failed
    started_at: float = field(default_factory=time.time)
    error: str | None = None  # why the start failed (phase "failed")
    hint: str | None = None
    daemons: list[DaemonRecord] = field(default_factory=list)

    def supervisor_alive(self) -> bool:
        return same_process(self.supervisor_pid, self.supervisor_created)

    def workers(self) -> list[DaemonRecord]:
        return [d for d in self.daemons if d.kind == "worker"]

    def find(self, name: str) -> DaemonRecord | None:
        return next((d for d in self.daemons if d.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FleetState:
        data = {k: v for k, v in data.items() if k != "version"}
        daemons = [DaemonRecord(**d) for d in data.pop("daemons", [])]
        return cls(**data, daemons=daemons)


class StateStore:
    """Paths inside one state directory, and atomic reads/writes of state.json."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_state_dir()).expanduser().resolve()

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def plan_file(self) -> Path:
        return self.root / "plan.json"

    @property
    def supervisor_log(self) -> Path:
        return self.root / "supervisor.log"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def log_file(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def ready_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.ready.json"

    def ensure(self) -> None:
        for path in (self.root, self.logs_dir, self.run_dir):
            path.mkdir(parents=True, exist_ok=True)

    def read(self) -> FleetState | None:
        """The last state written, or None when nothing was started (or it is unreadable)."""
        try:
            return FleetState.from_json(json.loads(self.state_file.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            return None  # a state file from another version: treat as absent, never crash

    def write(self, state: FleetState) -> None:
        """Write atomically: readers see the old file or the new one, never half of one."""
        self.ensure()
        tmp = self.state_file.with_name(f".state.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state.to_json(), indent=2))
        tmp.replace(self.state_file)

    def clear(self) -> None:
        self.state_file.unlink(missing_ok=True)
        self.plan_file.unlink(missing_ok=True)
