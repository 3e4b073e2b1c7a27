"""The Redis fleet with real processes: a real redis-server (with a password, database 2),
three real workers holding different models (one started with `duplexctl worker join`) and an
orchestrator that discovers them, driven over the WebSocket protocol.

Heartbeat 300 ms and expiry 1000 ms keep the waits short. The tests run in file order on one
fleet; each states what it leaves behind.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from typer.testing import CliRunner

from duplexctl.client.ws import VoiceClient
from duplexd.devkit.procs import DaemonProc, free_port, start_daemon

pytestmark = pytest.mark.integration

HEARTBEAT_MS, TTL_MS = 300, 1000
PASSWORD = "s3cret-fleet"
DEFAULT = "piper-en-us-joe"
WELCOME = "You're welcome"  # the built-in responder's shortest reply: turns take ~1 s

# Two extra eSpeak voices, so the workers can hold different models (no weights needed).
CATALOG = """\
models:
  - model_id: espeak-en-gb
    family: espeak
    native_sr: 22050
    estimated_memory_mb: 8
    tags: [cpu_ok, edge]
    voices: [en-gb]
    default_voice: en-gb
  - model_id: espeak-en-slow
    family: espeak
    native_sr: 22050
    estimated_memory_mb: 8
    tags: [cpu_ok, edge]
    options: {speed_wpm: 120}
"""


class RedisServer:
    """redis-server on a fixed port, so it can be stopped and started again in place."""

    def __init__(self, *extra: str, password: str | None = PASSWORD) -> None:
        self.port = free_port()
        self.password = password
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 2) -> str:
        auth = f"default:{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", *self.extra]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _until(lambda: _listening(self.port) or None, 5, "redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url(), decode_responses=True)


@dataclass
class Fleet:
    redis: RedisServer
    orch: DaemonProc
    workers: dict[str, DaemonProc]
    join: subprocess.Popen[str]
    join_out: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.redis.url()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _until(probe: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(what)


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            raise AssertionError(f"no output within {timeout_s}s")
    return proc.stdout.readline()


def _entries(server: RedisServer) -> dict[str, dict[str, Any]]:
    import json

    with server.client() as r:
        keys = r.keys("duplex:workers:*")
        return {k.removeprefix("duplex:workers:"): json.loads(r.get(k) or "{}") for k in keys}


def _orch_workers(fleet: Fleet) -> dict[str, dict[str, Any]]:
    status = httpx.get(f"http://{fleet.orch.addr}/status", timeout=5).json()
    return {w["name"]: w for w in status["workers"]}


async def _orch_workers_async(fleet: Fleet) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        status = (await http.get(f"http://{fleet.orch.addr}/status", timeout=5)).json()
    return {w["name"]: w for w in status["workers"]}


async def _wait_async(probe: Callable[[], Any], timeout_s: float, what: str) -> float:
    """Await `probe()` (a coroutine factory) until truthy; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if await probe():
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(what)


async def _text_turn(client: VoiceClient, text: str) -> list[dict[str, Any]]:
    await client.send_json({"type": "text", "text": text})
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        async for item in client.messages():
            if item.event is not None:
                events.append(item.event)
                if item.event["type"] == "turn":
                    return events
    return events


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet")
    catalog = tmp / "catalog.yaml"
    catalog.write_text(CATALOG)
    server = RedisServer()
    server.start()
    url = server.url()
    env = {"DUPLEX_REDIS__HEARTBEAT_MS": str(HEARTBEAT_MS), "DUPLEX_REDIS__TTL_MS": str(TTL_MS),
           "DUPLEX_MODEL_MANAGER__CATALOG": str(catalog)}  # fmt: skip
    started = time.monotonic()
    join_cmd = [sys.executable, "-m", "duplexctl", "worker", "join", "--redis", url,
                "--port", str(free_port()), "--name", "w-join",
                "--metrics-port", str(free_port())]  # fmt: skip
    with (tmp / "join.log").open("w") as join_log:
        join = subprocess.Popen(join_cmd, stdout=subprocess.PIPE, stderr=join_log, text=True,
                                env={**os.environ, **env})  # fmt: skip
    with ThreadPoolExecutor(2) as pool:
        futures = {
            name: pool.submit(start_daemon, "worker", tmp,
                              ["--name", name, "--preload-models", extra, "--redis", url], env=env)
            for name, extra in (("w-espeak", "espeak-en"), ("w-gb", "espeak-en-gb"))
        }  # fmt: skip
        workers = {name: f.result() for name, f in futures.items()}
    line = _read_line(join, 60)
    print(f"workers up in {time.monotonic() - started:.1f}s; join said: {line.strip()}")
    orch = start_daemon("orchestrator", tmp, ["--redis", url], env=env)
    print(f"fleet up in {time.monotonic() - started:.1f}s")
    try:
        yield Fleet(server, orch, workers, join, [line])
    finally:
        orch.stop()
        for proc in workers.values():
            proc.stop()
        if join.poll() is None:
            join.send_signal(signal.SIGTERM)
            join.wait(15)
        server.stop()


def test_workers_announce_themselves(fleet: Fleet) -> None:
    assert fleet.join_out[0].startswith(
        f"worker w-join registered in redis://default:***@127.0.0.1:{fleet.redis.port}/2 as grpc://"
    )
    entries = _entries(fleet.redis)
    assert set(entries) == {"w-espeak", "w-gb", "w-join"}
    for name, e in entries.items():
        assert e["name"] == name and e["addr"].startswith("grpc://127.0.0.1:")
        assert e["audio"] == {"sr": 48000, "frame_ms": 20}
        assert e["capabilities"]["streaming"] and e["capabilities"]["cpu_ok"]
        assert e["hardware"]["gpu"] is False and e["hardware"]["device"] == "cpu"
        assert {"rtf", "queue_depth", "p50_ms"} <= set(e["metrics"])
        assert e["default_model"] == DEFAULT and DEFAULT in e["resident_models"]
    assert set(entries["w-espeak"]["resident_models"]) == {DEFAULT, "espeak-en"}
    assert set(entries["w-gb"]["resident_models"]) == {DEFAULT, "espeak-en-gb"}
    assert entries["w-join"]["resident_models"] == [DEFAULT]
    with fleet.redis.client() as r:
        assert 0 < r.pttl("duplex:workers:w-gb") <= TTL_MS  # refreshed with an expiry
    seen = _orch_workers(fleet)
    assert set(seen) == set(entries)
    assert all(w["healthy"] and w["source"] == "redis" for w in seen.values())


def test_status_and_models_list_show_the_fleet(fleet: Fleet, tmp_path: Path) -> None:
    from duplexctl.cli.main import app

    runner = CliRunner()
    env = {"DUPLEX_STATE_DIR": str(tmp_path), "COLUMNS": "200"}  # no local daemons here
    result = runner.invoke(app, ["status", "--redis", fleet.url], env=env)
    print(result.output)
    assert result.exit_code == 0, result.output
    assert "no daemons running on this host" in result.output
    assert "fleet registry redis://default:***@" in result.output and PASSWORD not in result.output
    for name in ("w-espeak", "w-gb", "w-join"):
        assert name in result.output
    result = runner.invoke(app, ["models", "list"], env={**env, "DUPLEX_REDIS_URL": fleet.url})
    print(result.output)
    assert result.exit_code == 0, result.output
    workers = {"w-espeak", "w-gb", "w-join"}
    lines = [line.split() for line in result.output.splitlines()]
    resident = {
        (r[0], next(t for t in r if t in workers))
        for r in lines
        if r and r[0].startswith(("piper", "espeak")) and workers & set(r) and "resident" in r
    }
    assert {("espeak-en-gb", "w-gb"), ("espeak-en", "w-espeak")} <= resident
    assert ("espeak-en", "w-join") not in resident
    assert {w for m, w in resident if m == DEFAULT} == workers  # every catalog, every worker


@pytest.mark.asyncio
async def test_routing_follows_the_policy(fleet: Fleet) -> None:
    # requested and resident on exactly one worker: that worker
    async with VoiceClient(fleet.orch.addr, {"model": "espeak-en"}) as client:
        assert (client.ready["worker"], client.ready["model"]) == ("w-espeak", "espeak-en")
        events = await _text_turn(client, "thanks")
        assert events[-1]["model"] == "espeak-en" and events[-1]["reply_text"].startswith(WELCOME)
    async with VoiceClient(fleet.orch.addr, {"model": "espeak-en-gb"}) as client:
        assert (client.ready["worker"], client.ready["model"]) == ("w-gb", "espeak-en-gb")
    # no model asked: a worker's default model
    async with VoiceClient(fleet.orch.addr, {}) as client:
        assert client.ready["model"] == DEFAULT
    # a model no worker offers is refused with the router's reason
    with pytest.raises(Exception, match="no healthy worker offers model 'nope'"):
        await VoiceClient(fleet.orch.addr, {"model": "nope"}).connect()


@pytest.mark.asyncio
async def test_preload_on_miss_serves_from_fallback(fleet: Fleet) -> None:
    async with VoiceClient(fleet.orch.addr, {"model": "espeak-en-slow"}) as client:
        # cold everywhere: served now from the first fallback family (piper) ...
        assert client.ready["model"] == DEFAULT, client.ready

        async def loaded() -> list[str]:
            workers = await _orch_workers_async(fleet)
            return [n for n, w in workers.items() if "espeak-en-slow" in w["resident_models"]]

        # ... while LoadModel runs on one worker; its model event reaches the orchestrator
        took = await _wait_async(loaded, 10, "espeak-en-slow was never loaded")
        holders = await loaded()
        print(f"espeak-en-slow resident on {holders} after {took:.2f}s")
        assert len(holders) == 1  # one load, not one per worker
        assert "espeak-en-slow" in _entries(fleet.redis)[holders[0]]["resident_models"]
        events = await _text_turn(client, "thanks")  # the next turn uses the requested model
        assert events[-1]["model"] == "espeak-en-slow", events[-1]
        assert events[-1]["reply_text"].startswith(WELCOME)


@pytest.mark.asyncio
async def test_redis_restart_mid_run_drops_no_session(fleet: Fleet) -> None:
    async with VoiceClient(fleet.orch.addr, {}) as client:
        session = client.ready["session_id"]
        assert (await _text_turn(client, "thanks"))[-1]["reply_text"].startswith(WELCOME)
        fleet.redis.stop()
        down = time.monotonic()
        events = await _text_turn(client, "thanks")  # Redis is gone: the session goes on
        assert events[-1]["reply_text"].startswith(WELCOME)
        await asyncio.sleep(max(0.0, 2 * TTL_MS / 1000 - (time.monotonic() - down)))
        # entries would have expired by now: routing keeps the last known registry
        assert set(await _orch_workers_async(fleet)) == {"w-espeak", "w-gb", "w-join"}
        async with VoiceClient(fleet.orch.addr, {"model": "espeak-en-gb"}) as other:
            assert other.ready["worker"] == "w-gb"  # new sessions are routed too
        fleet.redis.start()  # empty, on the same port

        async def back() -> bool:
            return await asyncio.to_thread(lambda: len(_entries(fleet.redis)) == 3)

        took = await _wait_async(back, 10, "workers did not re-announce")
        print(f"redis down {time.monotonic() - down - took:.1f}s; re-announced in {took:.2f}s")
        events = await _text_turn(client, "thank you")
        assert events[-1]["reply_text"].startswith(WELCOME)
        assert not [e for e in events if e["type"] == "error"]
        assert client.ready["session_id"] == session
        # the grace after the reconnect dropped nobody
        await asyncio.sleep(3 * HEARTBEAT_MS / 1000)
        assert set(await _orch_workers_async(fleet)) == {"w-espeak", "w-gb", "w-join"}
    assert "redis reachable again" in fleet.orch.log_text()


@pytest.mark.asyncio
async def test_killed_worker_leaves_registry_and_session_moves(fleet: Fleet) -> None:
    victim = fleet.workers["w-gb"]
    async with VoiceClient(fleet.orch.addr, {"model": "espeak-en-gb"}) as client:
        assert client.ready["worker"] == "w-gb"
        assert (await _text_turn(client, "thanks"))[-1]["model"] == "espeak-en-gb"
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()

        async def key_gone() -> bool:
            return await asyncio.to_thread(lambda: "w-gb" not in _entries(fleet.redis))

        async def dropped() -> bool:
            return "w-gb" not in await _orch_workers_async(fleet)

        expired = await _wait_async(key_gone, 5, "the dead worker's entry did not expire")
        removed = await _wait_async(dropped, 5, "the orchestrator kept the dead worker")
        print(f"SIGKILL -> entry expired {expired:.2f}s, orchestrator dropped it +{removed:.2f}s")
        assert expired + removed < 4.0
        events = await _text_turn(client, "thanks")
        moved = [e for e in events if e["type"] == "worker"]
        assert moved and moved[0]["worker"] in ("w-espeak", "w-join"), events
        events = await _text_turn(client, "thank you")  # and it goes on there
        assert events[-1]["reply_text"].startswith(WELCOME)
        assert not [e for e in events if e["type"] == "error"]


def test_join_leaves_the_fleet_at_once_on_sigterm(fleet: Fleet) -> None:
    start = time.monotonic()
    fleet.join.send_signal(signal.SIGTERM)
    assert fleet.join.wait(15) == 0
    assert "w-join" not in _entries(fleet.redis)  # deleted, not left to expire
    _until(lambda: "w-join" not in _orch_workers(fleet), 2, "orchestrator kept w-join")
    took = time.monotonic() - start
    print(f"join stopped and left the registry in {took:.2f}s")
    assert took < 2 * TTL_MS / 1000 + 5  # the drain, not the expiry


def test_wrong_password_fails_fast(tmp_path: Path) -> None:
    server = RedisServer()
    server.start()
    try:
        bad = f"redis://default:wrong@127.0.0.1:{server.port}/0"
        cmd = [sys.executable, "-m", "duplexd", "worker", "--port", "0", "--metrics-port", "0",
               "--redis", bad]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2, done.stderr[-2000:]
        assert "refused the credentials" in done.stderr and "wrong@" not in done.stderr
        assert "model loaded" not in done.stderr  # before any model was loaded
    finally:
        server.stop()


def test_up_passes_redis_and_pins_gpus(tmp_path: Path) -> None:
    from duplexctl.supervise.spec import UpOptions, plan_daemons
    from duplexctl.supervise.state import StateStore

    url = "rediss://ops:pw@redis.lan:6380/1"
    specs = plan_daemons(UpOptions(gpus=["0", "1"], redis_url=url), StateStore(tmp_path))
    workers = [s for s in specs if s.kind == "worker"]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in workers] == ["0", "1"]
    assert all("cuda:0" in s.argv for s in workers)
    assert all(s.env["DUPLEX_REDIS_URL"] == url for s in specs)
    assert not any("pw" in arg for s in specs for arg in s.argv)  # not visible in `ps`


@pytest.mark.asyncio
async def test_tls_registry(tmp_path: Path) -> None:
    """rediss:// end to end: a TLS-only redis-server, read by the registry and the CLI reader."""
    import json
    import shutil

    from duplexd.config import RedisConfig
    from duplexd.fleet.discovery import RedisRegistry, read_announcements

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)  # fmt: skip
    tls_port = free_port()
    args = ["redis-server", "--port", "0", "--bind", "127.0.0.1", "--save", "", "--appendonly",
            "no", "--requirepass", PASSWORD, "--tls-port", str(tls_port),
            "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _until(lambda: _listening(tls_port) or None, 5, "TLS redis did not start")
        url = f"rediss://default:{PASSWORD}@127.0.0.1:{tls_port}/3?ssl_ca_certs={cert}"
        entry = {"name": "remote-gpu", "addr": "grpc://127.0.0.1:1", "heartbeat_ms": 300}
        client = redis.Redis.from_url(url, decode_responses=True)
        client.set("duplex:workers:remote-gpu", json.dumps(entry), px=5000)
        client.close()
        assert [e["name"] for e in await read_announcements(url)] == ["remote-gpu"]
        registry = RedisRegistry([], RedisConfig(url=url, heartbeat_ms=300, ttl_ms=1000))
        await registry.start()
        try:
            assert registry.connected and registry.workers["remote-gpu"].source == "redis"
            assert not registry.healthy()  # announced, but nothing answers gRPC there
        finally:
            await registry.aclose()
    finally:
        proc.terminate()
        proc.wait(5)


def test_unnamed_workers_on_one_host_both_join_and_a_taken_name_is_refused(
    tmp_path: Path,
) -> None:
    """Two `duplexd worker --redis URL` on one host without --name: each is `tts-<host>-<port>`
    and both are registered. Asking for a live worker's name with --name is still refused, and
    `duplexctl up` still names its workers itself."""
    from duplexctl.supervise.spec import UpOptions, plan_daemons
    from duplexctl.supervise.state import StateStore

    server = RedisServer()
    server.start()
    url = server.url()
    catalog = tmp_path / "catalog.yaml"  # espeak only: nothing to load but the program
    catalog.write_text(
        "models:\n  - model_id: espeak-en\n    family: espeak\n    native_sr: 22050\n"
    )
    env = {"DUPLEX_REDIS__HEARTBEAT_MS": str(HEARTBEAT_MS), "DUPLEX_REDIS__TTL_MS": str(TTL_MS),
           "DUPLEX_MODEL_MANAGER__CATALOG": str(catalog)}  # fmt: skip
    args = ["--redis", url, "--default-model", "espeak-en"]
    host = socket.gethostname().split(".")[0]
    try:
        with ThreadPoolExecutor(2) as pool:
            started = [pool.submit(start_daemon, "worker", tmp_path, args, env=env)
                       for _ in range(2)]  # fmt: skip
            workers = [f.result() for f in started]
        try:
            names = {f"tts-{host}-{w.port}": w for w in workers}
            entries = _entries(server)
            assert set(entries) == set(names), entries.keys()
            for name, w in names.items():
                assert entries[name]["addr"] == f"grpc://{w.addr}"
                assert w.info["registry"]["key"] == f"duplex:workers:{name}"
            taken = next(iter(names))
            cmd = [sys.executable, "-m", "duplexd", "worker", "--port", "0", "--metrics-port",
                   "0", "--name", taken, *args]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False,
                                  env={**os.environ, **env})  # fmt: skip
            assert done.returncode == 2, done.stderr[-2000:]
            assert f"worker name {taken!r} is already registered by grpc://" in done.stderr
            assert set(_entries(server)) == set(names)  # the refused one left nothing behind
        finally:
            for w in workers:
                w.stop()
    finally:
        server.stop()
    specs = plan_daemons(UpOptions(workers=2, redis_url=url), StateStore(tmp_path / "state"))
    argv = [list(s.argv) for s in specs if s.kind == "worker"]
    assert [a[a.index("--name") + 1] for a in argv] == ["tts-worker@0", "tts-worker@1"]
