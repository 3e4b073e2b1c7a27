"""What the orchestrator knows about its workers: address, health, models, load figures.

`Registry` is the seam sessions, routing and the HTTP routes see. `WorkerPool` is the part every
registry shares: handles polled for GetCapabilities and ListModels about once a second; a
worker that does not answer is marked unhealthy and routed around until it answers again.

- `StaticRegistry` (the embedded default): a pool of the configured workers.
- `duplexd.fleet.discovery.RedisRegistry`: a pool whose handles also come and go with the
  workers' Redis announcements (`source="redis"`); the daemon's app module wires it in.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from duplexd.config import WorkerEndpoint, WorkerTlsConfig
from duplexd.errors import DuplexError
from duplexd.logging import get_logger
from duplexd.orchestrator.deps import TtsApi
from duplexd.rpc import tts_pb2 as pb

__all__ = ["ClientFactory", "Registry", "StaticRegistry", "WorkerHandle", "WorkerPool"]

ClientFactory = Callable[[str], TtsApi]
"""addr -> a client of that worker (gRPC in production: `grpc_clients`)."""


def grpc_clients(api_key: str | None, tls: WorkerTlsConfig | None = None) -> ClientFactory:
    """Clients of the workers, over TLS when `tls` (config `worker_tls`) is active: static and
    Redis-announced workers alike, since both come from the pool's factory."""
    from duplexd.rpc.client import TTSClient

    if tls is None or not tls.active:
        return lambda addr: TTSClient(addr, api_key=api_key, timeout_s=5)
    from duplexd.auth import channel_credentials

    credentials = channel_credentials(tls)  # files read once: a bad one fails the start
    options: list[tuple[str, int | str]] = (
        [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    )
    return lambda addr: TTSClient(
        addr, api_key=api_key, credentials=credentials, timeout_s=5, options=options
    )


log = get_logger("duplexd.orchestrator.registry")


@dataclass
class WorkerHandle:
    name: str
    addr: str
    client: TtsApi
    healthy: bool = False
    caps: pb.GetCapResp | None = None
    models: list[pb.ModelInfo] = field(default_factory=list)
    last_error: str = ""
    last_seen: float = 0.0
    source: str = "static"  # "static" (config / --worker) | "redis" (announced)
    announcement: dict[str, Any] | None = None  # the worker's last Redis entry, if any

    @property
    def resident(self) -> list[str]:
        return [m.id for m in self.models if m.resident]

    @property
    def default_model(self) -> str | None:
        return next((m.id for m in self.models if m.is_default), None)

    @property
    def queue_depth(self) -> int:
        return self.caps.metrics.queue_depth if self.caps else 0

    @property
    def fal_p50_ms(self) -> float:
        return self.caps.metrics.fal_p50_ms if self.caps else 0.0

    def model(self, model_id: str) -> pb.ModelInfo | None:
        return next((m for m in self.models if m.id == model_id), None)

    def summary(self) -> dict[str, object]:
        return {
            "name": self.name,
            "addr": self.addr,
            "healthy": self.healthy,
            "resident_models": self.resident,
            "queue_depth": self.queue_depth,
            "fal_p50_ms": round(self.fal_p50_ms, 1),
            "sessions": self.caps.metrics.active_sessions if self.caps else 0,
            "last_error": self.last_error,
            "source": self.source,
            "host": (self.announcement or {}).get("host"),
        }


class Registry(Protocol):
    """The workers a session may be routed to (owned by the orchestrator)."""

    workers: dict[str, WorkerHandle]
    changed: asyncio.Event  # set when a worker joins, leaves or changes health

    def healthy(self) -> list[WorkerHandle]: ...

    def mark_unhealthy(self, name: str, reason: str) -> None: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class WorkerPool:
    """Worker handles, their health and models refreshed by polling; a `Registry`."""

    def __init__(
        self,
        endpoints: list[WorkerEndpoint],
        *,
        api_key: str | None = None,
        period_s: float = 1.0,
        clients: ClientFactory | None = None,
    ) -> None:
        self.clients = clients or grpc_clients(api_key)
        self.workers: dict[str, WorkerHandle] = {
            e.name: WorkerHandle(e.name, e.addr, self.clients(e.addr)) for e in endpoints
        }
        self.period_s = period_s
        self._task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._poll(), name="registry-poll")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for worker in self.workers.values():
            await worker.client.aclose()

    def healthy(self) -> list[WorkerHandle]:
        return [w for w in self.workers.values() if w.healthy]

    def mark_unhealthy(self, name: str, reason: str) -> None:
        worker = self.workers.get(name)
        if worker is not None and worker.healthy:
            worker.healthy = False
            worker.last_error = reason
            log.warning("worker unhealthy", worker=name, reason=reason)
            self.changed.set()

    async def refresh(self) -> None:
        await asyncio.gather(*(self.refresh_one(w) for w in self.workers.values()))

    async def refresh_one(self, worker: WorkerHandle) -> None:
        try:
            caps = await worker.client.capabilities(timeout=1.0)
            models = await worker.client.list_models()
        except DuplexError as exc:
            if worker.healthy or not worker.last_error:
                log.warning("worker not answering", worker=worker.name, error=str(exc))
            worker.healthy, worker.last_error = False, str(exc)
            return
        was_healthy = worker.healthy
        worker.caps, worker.models = caps, list(models.models)
        worker.healthy, worker.last_error, worker.last_seen = True, "", time.time()
        if not was_healthy:
            log.info("worker healthy", worker=worker.name, resident=worker.resident)
            self.changed.set()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            await self.refresh()


class StaticRegistry(WorkerPool):
    """The configured workers (config `workers`, `--worker`): the embedded default."""
