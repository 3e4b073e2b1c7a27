"""What to run: one `DaemonSpec` per daemon, and the plan `duplexctl up` builds from its flags.

Ports are fixed by the plan (not picked by the daemons) so the orchestrator can be told its
workers' addresses before they start, and so a restarted daemon comes back where clients
expect it. A busy port is reported before anything starts: gRPC binds with SO_REUSEPORT, so
without this check a second worker could silently share a port with a running one.

With ``--gpus`` each worker sees exactly one GPU (``CUDA_VISIBLE_DEVICES``, round robin when
there are more workers than GPUs) and runs on ``cuda:0`` inside it. With ``--redis`` every
daemon gets ``DUPLEX_REDIS_URL`` (in its environment, so a password never shows in ``ps``):
workers announce themselves there and the orchestrator discovers them (it keeps the local
workers as static entries too, so it routes to them even while Redis is down).
"""

from __future__ import annotations

import errno
import json
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from duplexctl.supervise.state import StateStore
from duplexd.errors import ConfigError, DuplexError

__all__ = [
    "DEFAULT_BASE_PORT",
    "DEFAULT_ORCHESTRATOR_PORT",
    "METRICS_OFFSET",
    "DaemonSpec",
    "PortBusy",
    "UpOptions",
    "check_ports",
    "load_plan",
    "plan_daemons",
    "save_plan",
]

DEFAULT_ORCHESTRATOR_PORT = 8080
DEFAULT_BASE_PORT = 7001
METRICS_OFFSET = 2100  # worker i: gRPC 7001+i, metrics 9101+i
HOST = "127.0.0.1"


class PortBusy(DuplexError):
    """A port the plan needs is taken (another duplex, or another program)."""

    status = "UNAVAILABLE"
    exit_code = 1


@dataclass(frozen=True)
class DaemonSpec:
    """One supervised daemon: how to start it and where it reports."""

    name: str
    kind: str  # "worker" | "orchestrator"
    argv: tuple[str, ...]
    ready_file: Path
    log_file: Path
    env: Mapping[str, str] = field(default_factory=dict)  # added to the supervisor's environ
    addr: str = ""  # where it will listen (host:port), known from the plan
    ports: Mapping[int, str] = field(default_factory=dict)  # port -> what it is for

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(argv=list(self.argv), ready_file=str(self.ready_file))
        data.update(log_file=str(self.log_file), ports={str(p): w for p, w in self.ports.items()})
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DaemonSpec:
        return cls(
            name=data["name"],
            kind=data["kind"],
            argv=tuple(data["argv"]),
            ready_file=Path(data["ready_file"]),
            log_file=Path(data["log_file"]),
            env=dict(data.get("env", {})),
            addr=data.get("addr", ""),
            ports={int(p): w for p, w in data.get("ports", {}).items()},
        )


@dataclass(frozen=True)
class UpOptions:
    """The flags of `duplexctl up` that shape the plan."""

    workers: int | None = None
    gpus: Sequence[str] = ()
    config_dir: Path | None = None
    orchestrator: bool = True
    base_port: int = DEFAULT_BASE_PORT
    metrics_base_port: int | None = None  # None: base_port + METRICS_OFFSET
    orchestrator_port: int = DEFAULT_ORCHESTRATOR_PORT
    redis_url: str | None = None  # fleet registry for every daemon (DUPLEX_REDIS_URL)


def plan_daemons(opts: UpOptions, store: StateStore) -> list[DaemonSpec]:
    """Workers first (in start order), then the orchestrator that routes to them."""
    count = opts.workers if opts.workers is not None else max(len(opts.gpus), 1)
    if count < 1:
        raise ConfigError("--workers must be at least 1")
    worker_yaml, orch_yaml = _config_files(opts.config_dir)
    workers = [_worker_spec(i, opts, store, worker_yaml) for i in range(count)]
    if not opts.orchestrator:
        return workers
    return [*workers, _orchestrator_spec(opts, store, orch_yaml, workers)]


def _worker_spec(i: int, opts: UpOptions, store: StateStore, config: Path | None) -> DaemonSpec:
    name = f"tts-worker@{i}"
    port = opts.base_port + i
    metrics_base = (
        opts.metrics_base_port
        if opts.metrics_base_port is not None
        else opts.base_port + METRICS_OFFSET
    )
    metrics = metrics_base + i if metrics_base else 0
    argv = [sys.executable, "-m", "duplexd", "worker", "--port", str(port)]
    argv += ["--metrics-port", str(metrics), "--name", name]
    argv += ["--ready-file", str(store.ready_file(name))]
    env = _redis_env(opts)
    if opts.gpus:
        # One GPU per worker; inside the worker it is always cuda:0.
        env["CUDA_VISIBLE_DEVICES"] = opts.gpus[i % len(opts.gpus)]
        argv += ["--device", "cuda:0"]
    if config:
        argv += ["--config", str(config)]
    ports = {port: f"{name} gRPC"}
    if metrics:
        ports[metrics] = f"{name} metrics"
    return DaemonSpec(
        name=name,
        kind="worker",
        argv=tuple(argv),
        ready_file=store.ready_file(name),
        log_file=store.log_file(name),
        env=env,
        addr=f"{HOST}:{port}",
        ports=ports,
    )


def _orchestrator_spec(
    opts: UpOptions, store: StateStore, config: Path | None, workers: Sequence[DaemonSpec]
) -> DaemonSpec:
    name, port = "orchestrator", opts.orchestrator_port
    argv = [sys.executable, "-m", "duplexd", "orchestrator", "--port", str(port)]
    argv += ["--ready-file", str(store.ready_file(name))]
    if config:
        argv += ["--config", str(config)]
    for worker in workers:
        argv += ["--worker", f"{worker.name}={worker.addr}"]
    return DaemonSpec(
        name=name,
        kind="orchestrator",
        argv=tuple(argv),
        ready_file=store.ready_file(name),
        log_file=store.log_file(name),
        env=_redis_env(opts),
        addr=f"{HOST}:{port}",
        ports={port: "orchestrator HTTP"},
    )


def _redis_env(opts: UpOptions) -> dict[str, str]:
    return {"DUPLEX_REDIS_URL": opts.redis_url} if opts.redis_url else {}


def _config_files(config_dir: Path | None) -> tuple[Path | None, Path | None]:
    """DIR/worker.yaml and DIR/orchestrator.yaml, each only if present."""
    if config_dir is None:
        return None, None
    if not config_dir.is_dir():
        raise ConfigError(f"--config {config_dir}: not a directory")
    config_dir = config_dir.resolve()  # the detached supervisor may run elsewhere
    found = [config_dir / n if (config_dir / n).is_file() else None for n in _CONFIG_NAMES]
    if not any(found):
        raise ConfigError(f"--config {config_dir}: holds neither {' nor '.join(_CONFIG_NAMES)}")
    return found[0], found[1]


_CONFIG_NAMES = ("worker.yaml", "orchestrator.yaml")


def check_ports(specs: Sequence[DaemonSpec], base_port: int) -> None:
    """Fail before starting anything when a planned port is taken."""
    for spec in specs:
        for port, what in spec.ports.items():
            if not 0 < port < 65536:
                raise ConfigError(f"port {port} for {what} is out of range")
            if _in_use(port):
                raise PortBusy(
                    f"port {port} ({what}) is already in use",
                    hint="is duplex already running? `duplexctl status`; else pick other ports, "
                    f"e.g. `duplexctl up --base-port {base_port + 100}`",
                )


def _in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: a port left in TIME_WAIT by a daemon we just stopped is free to use.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            return exc.errno in (errno.EADDRINUSE, errno.EACCES)
    return False


def save_plan(store: StateStore, specs: Sequence[DaemonSpec]) -> Path:
    store.ensure()
    store.plan_file.write_text(json.dumps([s.to_json() for s in specs], indent=2))
    return store.plan_file


def load_plan(path: Path) -> list[DaemonSpec]:
    return [DaemonSpec.from_json(d) for d in json.loads(path.read_text())]
