"""Start real daemon processes for tests and benchmarks: `duplexd worker` and friends.

Each process binds port 0 and reports its real ports through `--ready-file`, so tests run in
parallel without port clashes. Stopping sends SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DaemonProc", "daemon", "free_port", "start_daemon"]


def free_port() -> int:
    """A port free right now on loopback (for listeners that treat 0 as "off")."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DaemonProc:
    proc: subprocess.Popen[bytes]
    info: dict[str, Any]
    log_path: Path

    @property
    def addr(self) -> str:
        return str(self.info["addr"])

    @property
    def port(self) -> int:
        return int(self.info["port"])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, grace_s: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


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
    cmd = [
        str(python or sys.executable),
        "-m",
        "duplexd",
        kind,
        "--port",
        "0",
        "--ready-file",
        str(ready),
        *args,
    ]
    if kind == "worker" and "--metrics-port" not in args:
        cmd += ["--metrics-port", str(free_port())]
    full_env = {**os.environ, **(env or {})}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    deadline = time.monotonic() + timeout_s
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(
                f"duplexd {kind} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"duplexd {kind} not ready in {timeout_s}s:\n{log_path.read_text()}")
        time.sleep(0.05)
    return DaemonProc(proc, json.loads(ready.read_text()), log_path)


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
