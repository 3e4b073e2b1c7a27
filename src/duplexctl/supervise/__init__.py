"""Run and watch the daemons on this machine: `duplexctl up/down/status/logs`.

Modelled on LiveKit's ``ipc/supervised_proc.py``: each daemon is a `DaemonSpec` (spec.py),
run by a `SupervisedProc` (proc.py) that starts it, waits for its ready file, pings it and
restarts it with backoff; a `Supervisor` (supervisor.py) owns them all and records what it
sees in the state directory (state.py) for the short-lived console commands (control.py).

Importing this package imports nothing heavy; grpc and httpx load on the first ping.
"""

from __future__ import annotations

from duplexctl.supervise.proc import DaemonStartError, SupervisedProc, Timing
from duplexctl.supervise.spec import DaemonSpec, UpOptions, plan_daemons
from duplexctl.supervise.state import DaemonRecord, FleetState, StateStore, default_state_dir
from duplexctl.supervise.supervisor import Supervisor, serve

__all__ = [
    "DaemonRecord",
    "DaemonSpec",
    "DaemonStartError",
    "FleetState",
    "StateStore",
    "SupervisedProc",
    "Supervisor",
    "Timing",
    "UpOptions",
    "default_state_dir",
    "plan_daemons",
    "serve",
]
