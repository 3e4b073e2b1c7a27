"""Issue item 11 with real processes: the orchestrator's worker clients over TLS and mTLS (static
and Redis-discovered workers), and a worker that cannot reach Redis saying so in its health.

Certificates come from the openssl CLI: one test CA, a worker certificate for the fleet name
``tts.internal`` only (so the dialed address 127.0.0.1 does not match it: `server_name` must),
and a client certificate for mTLS.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from duplexd.config import RedisConfig, WorkerEndpoint, WorkerTlsConfig
from duplexd.devkit.procs import DaemonProc, daemon, free_port
from duplexd.errors import ConfigError, DaemonUnavailable
from duplexd.fleet.discovery import RedisRegistry
from duplexd.orchestrator.registry import ClientFactory, WorkerPool, grpc_clients
from duplexd.tts.app import REGISTRY_SERVICE

pytestmark = pytest.mark.integration

FLEET_NAME = "tts.internal"


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _signed(folder: Path, name: str, cn: str, ca: Path, ca_key: Path, ext: str) -> Path:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}")  # fmt: skip
    (folder / f"{name}.ext").write_text(ext + "\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "1", "-out", str(cert),
             "-extfile", str(folder / f"{name}.ext"))  # fmt: skip
    return cert


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    folder = tmp_path_factory.mktemp("certs")
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "1", "-keyout", str(ca_key), "-out", str(ca),
             "-subj", "/CN=duplex test CA")  # fmt: skip
    server = _signed(folder, "server", FLEET_NAME, ca, ca_key, f"subjectAltName=DNS:{FLEET_NAME}")
    client = _signed(folder, "client", "orchestrator", ca, ca_key, "extendedKeyUsage=clientAuth")
    return Certs(ca, server, folder / "server.key", client, folder / "client.key")


def _tls(certs: Certs, *, client: bool = False, name: str | None = FLEET_NAME) -> WorkerTlsConfig:
    pair = {"client_cert": certs.client_cert, "client_key": certs.client_key} if client else {}
    return WorkerTlsConfig(ca=certs.ca, server_name=name, **pair)


async def _answers(factory: ClientFactory, addr: str) -> bool:
    client = factory(addr)
    try:
        await client.capabilities(timeout=3.0)
        return True
    except DaemonUnavailable:
        return False
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_the_orchestrators_clients_dial_a_tls_worker(certs: Certs, tmp_path: Path) -> None:
    tls_args = ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]
    with daemon("worker", tmp_path, tls_args) as worker:
        assert not await _answers(grpc_clients(None), worker.addr)  # plaintext: no
        assert not await _answers(grpc_clients(None, _tls(certs, name=None)), worker.addr)
        assert await _answers(grpc_clients(None, _tls(certs)), worker.addr)
        # what the orchestrator builds for its static workers: the pool's factory
        pool = WorkerPool([WorkerEndpoint(name="w", addr=worker.addr)],
                          clients=grpc_clients(None, _tls(certs)))  # fmt: skip
        try:
            await pool.refresh()
            assert pool.workers["w"].healthy, pool.workers["w"].last_error
            assert "piper-en-us-joe" in pool.workers["w"].resident
        finally:
            await pool.aclose()


@pytest.mark.asyncio
async def test_an_mtls_worker_found_through_redis(certs: Certs, tmp_path: Path) -> None:
    """mTLS (the worker requires a client certificate) and discovery: a worker announced in
    Redis is dialed with the same factory as a static one."""
    with _redis() as url:
        args = ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
                "--tls-client-ca", str(certs.ca), "--redis", url, "--name", "w-mtls"]  # fmt: skip
        env = {"DUPLEX_REDIS__HEARTBEAT_MS": "200", "DUPLEX_REDIS__TTL_MS": "1000"}
        with daemon("worker", tmp_path, args, env=env) as worker:
            assert worker.info["registry"]["registered"] is True
            assert not await _answers(grpc_clients(None, _tls(certs)), worker.addr)  # no cert
            redis = RedisConfig(url=url, heartbeat_ms=200, ttl_ms=1000)
            clients = grpc_clients(None, _tls(certs, client=True))
            registry = RedisRegistry([], redis, period_s=0.2, clients=clients)
            await registry.start()
            try:
                await _until(lambda: _healthy(registry, "w-mtls"), 10, "never healthy over mTLS")
                assert registry.workers["w-mtls"].source == "redis"
            finally:
                await registry.aclose()


def test_worker_tls_settings_are_checked_at_start(certs: Certs, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"worker_tls\.ca: cannot read .*missing\.pem"):
        grpc_clients(None, WorkerTlsConfig(ca=tmp_path / "missing.pem"))
    (tmp_path / "not.pem").write_text("hello")
    with pytest.raises(ConfigError, match=r"worker_tls\.client_cert: .* is not a PEM file"):
        grpc_clients(
            None, WorkerTlsConfig(client_cert=tmp_path / "not.pem", client_key=certs.client_key)
        )
    with pytest.raises(ValidationError, match="client_cert and client_key go together"):
        WorkerTlsConfig(client_cert=certs.client_cert)
    assert not WorkerTlsConfig().active and WorkerTlsConfig(enabled=True).active


@pytest.mark.asyncio
async def test_a_worker_that_cannot_reach_redis_says_so(tmp_path: Path) -> None:
    """It serves (duplex.tts.v1.TTS stays SERVING) but no orchestrator can find it: the
    registry's health entry is NOT_SERVING and its ready file says why, until Redis answers."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    env = {"DUPLEX_REDIS__HEARTBEAT_MS": "200", "DUPLEX_REDIS__TTL_MS": "1000"}
    with daemon("worker", tmp_path, ["--redis", url, "--name", "w-lonely"], env=env) as worker:
        registry = worker.info["registry"]
        assert registry["registered"] is False
        assert f"redis redis://127.0.0.1:{port}/0 unreachable" in registry["error"]
        assert await _health(worker, "duplex.tts.v1.TTS") == health_pb2.HealthCheckResponse.SERVING
        assert await _health(worker, REGISTRY_SERVICE) == _NOT_SERVING
        with _redis(port) as _:
            await _until(lambda: _health_is(worker, REGISTRY_SERVICE, _SERVING), 10, "not seen")
            info = _ready_file(worker)
            assert info["registry"]["registered"] is True and info["registry"]["error"] is None
        # Redis gone again: it says so again (and keeps serving)
        await _until(lambda: _health_is(worker, REGISTRY_SERVICE, _NOT_SERVING), 10, "missed")
        assert _ready_file(worker)["registry"]["registered"] is False
        assert await _health(worker, "duplex.tts.v1.TTS") == _SERVING


_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _health(worker: DaemonProc, service: str) -> int:
    async with aio.insecure_channel(worker.addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=3)
    return int(reply.status)


async def _health_is(worker: DaemonProc, service: str, status: int) -> bool:
    return await _health(worker, service) == status


async def _healthy(registry: RedisRegistry, name: str) -> bool:
    worker = registry.workers.get(name)
    return worker is not None and worker.healthy


def _ready_file(worker: DaemonProc) -> dict[str, Any]:
    # start_daemon writes the ready file beside the log: NAME.ready.json / NAME.ready.log
    data = json.loads(worker.log_path.with_suffix(".json").read_text())
    assert isinstance(data, dict)
    return data


async def _until(probe: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await probe():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(what)


@contextmanager
def _redis(port: int | None = None) -> Iterator[str]:
    """redis-server on `port` (a free one by default), no password; yields its URL."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    port = port or free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise AssertionError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.mark.asyncio
async def test_the_orchestrator_daemon_dials_its_tls_worker(certs: Certs, tmp_path: Path) -> None:
    """The daemon itself (not only its client factory) uses `worker_tls` for its workers."""
    import httpx

    tls_args = ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]
    env = {"DUPLEX_WORKER_TLS__ENABLED": "true", "DUPLEX_WORKER_TLS__CA": str(certs.ca),
           "DUPLEX_WORKER_TLS__SERVER_NAME": FLEET_NAME}  # fmt: skip
    with (
        daemon("worker", tmp_path / "w", tls_args) as worker,
        daemon("orchestrator", tmp_path / "o", ["--worker", f"w={worker.addr}"], env=env) as orch,
    ):
        async with httpx.AsyncClient(base_url=f"http://{orch.addr}") as http:
            deadline = time.monotonic() + 20
            while True:
                status = (await http.get("/status")).json()
                (w,) = status["workers"]
                if w["healthy"] or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert w["healthy"], w["last_error"]
            assert "piper-en-us-joe" in w["resident_models"]
            assert (await http.get("/readyz")).status_code == 200
