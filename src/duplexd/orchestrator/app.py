"""Run an orchestrator process: load VAD/ASR, poll workers, serve HTTP/WS, stop on SIGTERM.

Stopping (SIGTERM, SIGINT) drains within `server.shutdown_grace_s`: new sessions are refused
and each open one is told it is going away and closed (`OrchestratorServer.drain`), then the
HTTP server stops. Without the drain an open WebSocket kept aiohttp's shutdown waiting (up to
its 60 s `shutdown_timeout`) until the heartbeat dropped the socket, ~31 s later."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

from aiohttp import web

from duplexd.asr import create_asr
from duplexd.auth import ensure_safe_bind
from duplexd.config import OrchestratorConfig, resolve_path
from duplexd.logging import get_logger
from duplexd.orchestrator.endofturn import load_end_of_turn
from duplexd.orchestrator.registry import Registry, StaticRegistry, grpc_clients
from duplexd.orchestrator.routing import RoutingPolicy
from duplexd.orchestrator.server import OrchestratorServer
from duplexd.orchestrator.session import SessionDeps
from duplexd.orchestrator.telemetry import OrchTelemetry
from duplexd.priority import run_at_lower_priority

__all__ = ["run_orchestrator"]

log = get_logger("duplexd.orchestrator.app")


async def run_orchestrator(
    config: OrchestratorConfig, config_file: Path | None = None, ready_file: Path | None = None
) -> None:
    cfg = config
    ensure_safe_bind(cfg.server.host, cfg.auth.api_key, cfg.auth.allow_insecure_remote)
    policy = RoutingPolicy.load(resolve_path(cfg.routing.policy_file, config_file))
    policy.mode(cfg.routing.policy)  # an unknown mode fails now, not at the first caller
    if "prefer_resident" in cfg.routing.model_fields_set:  # set in config/env: every mode
        policy = policy.model_copy(update={"modes": {
            name: mode.model_copy(update={"prefer_resident": cfg.routing.prefer_resident})
            for name, mode in policy.modes.items()
        }})  # fmt: skip
    asr_args = (cfg.asr.engine, cfg.asr.model)
    asr_opts: dict[str, Any] = dict(
        device=cfg.asr.device, compute_type=cfg.asr.compute_type, cpu_threads=cfg.asr.threads,
        language=cfg.asr.language,
        **({"short_form": cfg.asr.short_form} if cfg.asr.engine == "faster-whisper" else {}),
    )  # fmt: skip
    asr = await asyncio.to_thread(create_asr, *asr_args, **asr_opts)
    # Captions on a second copy of the model, below the final's priority (config: asr.*)
    partial_asr = None
    if cfg.asr.partials_nice > 0:
        partial_asr = await run_at_lower_priority(
            cfg.asr.partials_nice, create_asr, *asr_args, **asr_opts
        )
    registry = _registry(cfg)
    await registry.start()
    turn = cfg.turn
    model = resolve_path(turn.smart_turn_model, config_file) if turn.smart_turn_model else None
    end_of_turn, eot_warning = await asyncio.to_thread(
        load_end_of_turn, turn.end_of_turn, model,
        threshold=turn.smart_turn_threshold, threads=turn.smart_turn_threads,
        op_threads=turn.smart_turn_op_threads, softmax=turn.smart_turn_softmax,
        realtime=turn.smart_turn_realtime,
    )  # fmt: skip
    deps = SessionDeps.production(
        cfg, asr, registry, policy, OrchTelemetry(), end_of_turn, partial_asr=partial_asr
    )
    if eot_warning:
        deps.warnings.append(eot_warning)
    server = OrchestratorServer(deps)
    grace_s = cfg.server.shutdown_grace_s
    reserve_s = min(1.0, grace_s / 3)  # of the grace, for the HTTP server and registry to stop
    # after the drain, handlers still running get reserve/2 to finish, then as long cancelled
    runner = web.AppRunner(server.app, access_log=None, shutdown_timeout=reserve_s / 2)
    await runner.setup()
    site = web.TCPSite(runner, cfg.server.host, cfg.server.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # started above
    _write_ready(ready_file, f"{cfg.server.host}:{port}", port)
    log.info("orchestrator ready", addr=f"{cfg.server.host}:{port}",
             workers=[w.summary() for w in registry.workers.values()])  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("orchestrator draining", sessions=len(server.sessions), grace_s=grace_s)
    await server.drain(grace_s - reserve_s)
    await runner.cleanup()
    await registry.aclose()
    log.info("orchestrator stopped")


def _registry(cfg: OrchestratorConfig) -> Registry:
    """The static workers from config, plus the Redis registry when redis.url is set.

    With Redis, the built-in default worker list (127.0.0.1:7001) is dropped unless workers
    were configured explicitly (file, env or --worker): the fleet comes from Redis. Every
    worker is dialled the same way: with the API key, over TLS/mTLS when `worker_tls` is on."""
    clients = grpc_clients(cfg.auth.api_key, cfg.worker_tls)
    if not cfg.redis.url:
        return StaticRegistry(cfg.workers, api_key=cfg.auth.api_key, clients=clients)
    from duplexd.fleet.discovery import RedisRegistry

    static = cfg.workers if "workers" in cfg.model_fields_set else []
    return RedisRegistry(static, cfg.redis, api_key=cfg.auth.api_key, clients=clients)


def _write_ready(path: Path | None, addr: str, port: int) -> None:
    if path is None:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"pid": os.getpid(), "addr": addr, "port": port, "metrics_port": port})
    )
    tmp.replace(path)
