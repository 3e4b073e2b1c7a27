"""Run a worker process: bind gRPC (+TLS, API key, health), serve metrics, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from duplexd.auth import ensure_safe_bind
from duplexd.config import AuthConfig, WorkerConfig
from duplexd.logging import get_logger
from duplexd.metrics import serve_metrics
from duplexd.rpc import tts_pb2_grpc as pb_grpc
from duplexd.tts.server import ApiKeyInterceptor, TTSServicer
from duplexd.tts.worker import Worker

if TYPE_CHECKING:
    from duplexd.fleet.announce import Announcer

__all__ = ["REGISTRY_SERVICE", "run_worker", "server_credentials"]

log = get_logger("duplexd.tts.app")
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_SERVICE = "duplex.tts.v1.TTS"
# A health entry, not an RPC service: SERVING while this worker is registered in the fleet's
# Redis, NOT_SERVING while it is not (Redis unreachable; the worker serves all the same, but no
# orchestrator finds it). Only in fleet mode (redis.url); `duplex.tts.v1.TTS` and "" stay SERVING.
REGISTRY_SERVICE = "duplex.fleet.v1.Registry"


def server_credentials(auth: AuthConfig) -> grpc.ServerCredentials | None:
    if auth.tls_cert is None and auth.tls_key is None:
        return None
    if auth.tls_cert is None or auth.tls_key is None:
        from duplexd.errors import ConfigError

        raise ConfigError("TLS needs both auth.tls_cert and auth.tls_key")
    ca = auth.tls_client_ca.read_bytes() if auth.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(auth.tls_key.read_bytes(), auth.tls_cert.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


async def run_worker(
    config: WorkerConfig, config_file: Path | None = None, ready_file: Path | None = None
) -> None:
    cfg = config.worker
    ensure_safe_bind(cfg.host, config.auth.api_key, config.auth.allow_insecure_remote)
    _tune_malloc(cfg.malloc_mmap_threshold_kb)
    if config.redis.url:  # a wrong password fails now, not after the models are loaded
        from duplexd.fleet.announce import preflight

        await preflight(config.redis.url)
    worker = Worker(config, config_file)
    await worker.start()  # default model loaded + warm before we accept a single call
    server = aio.server(interceptors=[ApiKeyInterceptor(config.auth.api_key)])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bind = f"{cfg.host}:{cfg.port}"
    creds = server_credentials(config.auth)
    port = server.add_secure_port(bind, creds) if creds else server.add_insecure_port(bind)
    addr = f"{cfg.host}:{port}"
    worker.name = config.worker_name(port)  # a fleet worker's default name has the port
    pb_grpc.add_TTSServicer_to_server(TTSServicer(worker, addr), server)
    await server.start()
    metrics_port = (
        serve_metrics(worker.telemetry.registry, cfg.metrics_port, cfg.host)
        if cfg.metrics_port
        else 0
    )
    for service in ("", _SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    ready_written = False

    async def registry_changed(announcer: Announcer) -> None:
        """Registered or not (Redis away): the health entry and the ready file say which."""
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        await health_servicer.set(REGISTRY_SERVICE, serving if announcer.connected else not_serving)
        if ready_written:
            _write_ready(ready_file, addr, port, metrics_port, announcer)

    if config.redis.url:  # not registered until the announcer says so
        await health_servicer.set(REGISTRY_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        # None without redis.url
        announcer = await _announce(config, worker, port, registry_changed)
    except BaseException:  # e.g. Redis refused the password, or the name is taken
        await server.stop(grace=0)
        await worker.aclose()
        raise
    _write_ready(ready_file, addr, port, metrics_port, announcer)
    ready_written = True
    log.info(
        "worker ready",
        addr=addr,
        metrics_port=metrics_port,
        name=worker.name,
        default_model=worker.manager.default_model_id,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("worker draining")
    if announcer is not None:  # leave the registry first: no new sessions come our way
        await announcer.aclose()
    for service in ("", _SERVICE, *([REGISTRY_SERVICE] if announcer is not None else [])):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(grace=5.0)
    await worker.aclose()
    log.info("worker stopped")


def _tune_malloc(threshold_kb: int) -> None:
    """A fixed glibc mmap threshold (`worker.malloc_mmap_threshold_kb`): synthesis buffers above
    it are mmapped and returned to the OS when freed. glibc's default threshold slides up to the
    largest block freed so far, after which such buffers come from the heap and stay there:
    the worker's RSS crept up under a steady load (docs/benchmarks.md, soak). Process-wide, so
    set here, at the start of the worker process, not by an adapter."""
    if threshold_kb <= 0:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc (musl, macOS): nothing to tune
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or mallopt(_M_MMAP_THRESHOLD, threshold_kb * 1024) != 1:
        log.warning("could not set the malloc mmap threshold", threshold_kb=threshold_kb)


async def _announce(
    config: WorkerConfig,
    worker: Worker,
    port: int,
    on_change: Callable[[Announcer], Awaitable[None]],
) -> Announcer | None:
    """Fleet mode (redis.url set): announce this worker in the Redis registry."""
    if not config.redis.url:
        return None
    from duplexd.fleet.announce import Announcer, advertised_addr

    advertise = advertised_addr(config.redis.advertise, config.worker.host, port)
    announcer = Announcer(worker, advertise, config.redis, on_change=on_change)
    await announcer.start()
    return announcer


def _write_ready(
    path: Path | None, addr: str, port: int, metrics_port: int, announcer: Announcer | None
) -> None:
    """A readiness file for supervisors and tests: written atomically once serving."""
    if path is None:
        return
    info: dict[str, object] = {
        "pid": os.getpid(), "addr": addr, "port": port, "metrics_port": metrics_port,
    }  # fmt: skip
    if announcer is not None:
        info["registry"] = {
            "redis": announcer.where, "key": announcer.key,
            "advertise": announcer.addr, "registered": announcer.connected,
            "error": announcer.error,
        }  # fmt: skip
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(path)
