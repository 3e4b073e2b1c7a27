"""Start real daemon processes for tests and benchmarks: `duplexd worker` and friends.

Each process binds port 0 and reports its real ports through `--ready-file`, so tests run in
parallel without port clashes. Launching and stopping (SIGTERM, then SIGKILL after a grace
period) are `duplexd.launch`'s, as for `duplexctl up` and the embedded stack.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from duplexd.launch import Launched, LaunchError, LaunchSpec, launch

__all__ = ["DaemonProc", "daemon", "free_port", "start_daemon"]


def free_port() -> int:
    """A port free right now on loopback (for listeners that treat 0 as "off")."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DaemonProc:
    launched: Launched
    info: dict[str, Any]
    log_path: Path

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.launched.proc

    @property
    def addr(self) -> str:
        return str(self.info["addr"])

    @property
    def port(self) -> int:
        return int(self.info["port"])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, grace_s: float = 10.0) -> int:
        return self.launched.stop(grace_s)


def start_daemon(
    kind: str,
    workdir: Path,
    args: Sequence[str] = (),
    *,
    env: dict[str, str] | None = None,
    timeout_s: float = 60.0,
    python: Path | None = None,
) -> DaemonProc:
    """Start `duplexd <kind> --port 0 …` and wait until it reports ready; `python` runs it from
    another environment (an engine env such as `.venvs/parler`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / f"{kind}-{time.monotonic_ns()}.ready.json"
    log_path = ready.with_suffix(".log")
    args = ["--port", "0", *args]
    if kind == "worker" and "--metrics-port" not in args:
        args += ["--metrics-port", str(free_port())]
    launched = launch(LaunchSpec(kind, args, ready_file=ready, log_file=log_path, env=env or {},
                                 python=python))  # fmt: skip
    try:
        info = launched.wait_ready(timeout_s)
    except LaunchError as exc:
        log = log_path.read_text(errors="replace")[-3000:]
        if "not ready after" in exc.message:  # too slow: wait_ready stopped it
            raise TimeoutError(f"duplexd {kind} not ready in {timeout_s}s:\n{log}") from None
        raise RuntimeError(f"duplexd {kind} exited with {launched.returncode}:\n{log}") from None
    return DaemonProc(launched, info, log_path)


@contextmanager
def daemon(
    kind: str,
    workdir: Path,
    args: Sequence[str] = (),
    *,
    env: dict[str, str] | None = None,
    timeout_s: float = 60.0,
    python: Path | None = None,
) -> Iterator[DaemonProc]:
    proc = start_daemon(kind, workdir, args, env=env, timeout_s=timeout_s, python=python)
    try:
        yield proc
    finally:
        proc.stop()
