"""An orchestrator served in-process with the devkit's fakes behind it, for tests of its edges
(HTTP, WebSocket): the real server, routes, auth and session code, with a `FakeTTS` per
configured worker and the fake VAD and transcriber."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from duplexd.config import OrchestratorConfig
from duplexd.devkit.fakes import FakeTranscriber, FakeTTS, FakeVAD
from duplexd.orchestrator.deps import SessionDeps, responders
from duplexd.orchestrator.registry import StaticRegistry
from duplexd.orchestrator.routing import RoutingPolicy
from duplexd.orchestrator.server import OrchestratorServer
from duplexd.orchestrator.telemetry import OrchTelemetry

__all__ = ["served_orchestrator"]


@asynccontextmanager
async def served_orchestrator(
    cfg: OrchestratorConfig,
) -> AsyncIterator[tuple[TestClient[Any, Any], OrchestratorServer]]:
    """(a client of the served app, the server); drained and closed on exit."""
    fakes = {w.addr: FakeTTS(w.name, frames_per_unit=2, frame_interval_s=0.0) for w in cfg.workers}
    registry = StaticRegistry(cfg.workers, clients=fakes.__getitem__)
    await registry.refresh()
    deps = SessionDeps(
        config=cfg, registry=registry, policy=RoutingPolicy(), telemetry=OrchTelemetry(),
        vad=FakeVAD, transcriber=FakeTranscriber, responder=responders(cfg),
    )  # fmt: skip
    server = OrchestratorServer(deps)
    client = TestClient(TestServer(server.app))
    await client.start_server()
    try:
        yield client, server
    finally:
        await server.drain(0.5)
        await client.close()
