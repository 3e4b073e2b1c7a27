"""The worker side of the registry: announce this worker in Redis and keep the entry fresh.

`Announcer.start()` writes the announcement (design section 6) to ``duplex:workers:<name>``
with a ``PX`` expiry of ``redis.ttl_ms`` and publishes ``up`` on ``duplex:events``; a heartbeat
rewrites it every ``redis.heartbeat_ms`` with fresh metrics. A model event (loaded, evicted …)
rewrites it at once and publishes ``model``, so orchestrators route on it within milliseconds.
A graceful stop deletes the entry and publishes ``down``; a killed worker simply stops
heartbeating and its entry expires.

Redis is never on the serving path: if it goes away the worker keeps serving, logs it once and
re-announces as soon as Redis answers again. Only a wrong password (or a bad URL) at start-up
is fatal, because that never heals by itself. While it is away the worker is not registered,
and says so: `connected` and `error` here, and `on_change` (awaited at every change, and once at
start) lets the worker app report it (its gRPC health service ``duplex.fleet.v1.Registry`` and
its ready file).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from duplexd.config import RedisConfig
from duplexd.errors import ConfigError, DuplexError
from duplexd.fleet.keys import EVENTS_CHANNEL, load_entry, open_redis, redact_url, worker_key
from duplexd.logging import get_logger
from duplexd.tts.description import describe

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from duplexd.tts.worker import Worker

__all__ = ["Announcer", "advertised_addr", "announcement", "preflight"]

log = get_logger("duplexd.fleet.announce")

_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")  # noqa: S104  # recognised, not bound


def advertised_addr(advertise: str | None, host: str, port: int) -> str:
    """HOST:PORT that orchestrators dial: ``--advertise`` (its port defaults to the bound one),
    else the bound address (the machine's host name when bound to every interface)."""
    if advertise:
        value = advertise.strip().removeprefix("grpc://")
        if value.startswith("[") and value.endswith("]"):  # [v6] without a port
            return f"{value}:{port}"
        if value.count(":") > 1 and not value.startswith("["):  # bare IPv6 literal
            return f"[{value}]:{port}"
        name, sep, given = value.rpartition(":")
        if not sep:
            return f"{value}:{port}"
        if not given.isdigit():
            raise ConfigError(
                f"--advertise {advertise!r}: the port must be a number", hint="HOST or HOST:PORT"
            )
        return f"{name}:{port}" if given == "0" else value
    if host in _WILDCARD_HOSTS:
        return f"{socket.gethostname()}:{port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def announcement(worker: Worker, addr: str, redis: RedisConfig) -> dict[str, Any]:
    """The JSON a worker announces: the design's fields plus what operators want to see."""
    d = describe(worker, addr)
    return {
        "name": d.name,
        "addr": f"grpc://{d.addr}",
        "capabilities": {
            "streaming": True,
            "zero_shot": d.zero_shot,
            "lora": d.lora,
            "cpu_ok": d.cpu_ok,
            "languages": list(d.languages),
            "emotive_zero_prompt": d.emotive_zero_prompt,
            "families": list(d.families),
        },
        "audio": {"sr": d.sample_rate, "frame_ms": d.frame_ms},
        "hardware": {
            "gpu": d.gpu,
            "device": d.device,
            "vram_gb": _vram_gb(d.device) if d.gpu else 0,
            "ram_gb": round(d.ram_total_bytes / 1e9, 1),
            "cpu_count": d.cpu_count,
        },
        "resident_models": list(d.resident_models),
        "default_model": d.default_model,
        "metrics": {
            "rtf": round(d.rtf, 4),
            "queue_depth": d.queue_depth,
            "p50_ms": round(d.fal_p50_ms, 1),  # first-audio latency
            "p95_ms": round(d.fal_p95_ms, 1),
            "active_sessions": d.active_sessions,
        },
        "version": d.version,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_unix": round(d.started_unix, 3),
        "heartbeat_unix": round(d.described_unix, 3),
        "heartbeat_ms": redis.heartbeat_ms,
        "ttl_ms": redis.ttl_ms,
    }


async def preflight(url: str) -> None:
    """Before loading any model: a bad URL or refused credentials end the worker now (they
    never heal); an unreachable Redis is only a warning (the announcer retries)."""
    from redis.exceptions import AuthenticationError, RedisError

    client = open_redis(url)
    try:
        await client.ping()
    except AuthenticationError as exc:
        raise ConfigError(
            f"redis {redact_url(url)} refused the credentials: {exc}",
            hint="check the user and password in the URL (redis://user:pass@host:port/db)",
        ) from None
    except (RedisError, OSError) as exc:
        log.warning("redis unreachable; the worker will serve and register when it answers",
                    redis=redact_url(url), error=str(exc) or type(exc).__name__)  # fmt: skip
    finally:
        await client.aclose()


def _why(exc: BaseException | None) -> str:
    return (str(exc) or type(exc).__name__) if exc is not None else "unknown"


def _vram_gb(device: str) -> float | None:
    from duplexd.tts.memory import total_bytes

    try:
        return round(total_bytes(device) / 1e9, 1)
    except DuplexError:
        return None


class Announcer:
    """Keeps one worker's registry entry alive while the worker serves."""

    def __init__(
        self,
        worker: Worker,
        addr: str,
        config: RedisConfig,
        *,
        on_change: Callable[[Announcer], Awaitable[None]] | None = None,
    ) -> None:
        if not config.url:
            raise ConfigError("the announcer needs redis.url")
        self.worker = worker
        self.addr = addr
        self.config = config
        self.url = config.url
        self.key = worker_key(worker.name)
        self.connected = False  # registered: the entry was written on the last attempt
        self.error: str | None = "not announced yet"  # why not, while not registered
        self._on_change = on_change
        self._reported: bool | None = None  # the state on_change last heard
        self._client: Redis | None = None
        self._events: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def where(self) -> str:
        return redact_url(self.url)

    async def start(self) -> None:
        """Register (or note that Redis is away and keep trying); a bad password is fatal."""
        from redis.exceptions import AuthenticationError, RedisError

        self._loop = asyncio.get_running_loop()
        self._client = open_redis(self.url)
        try:
            await self._claim_name()
            await self._announce()
            await self._publish({"type": "up"})
            await self._set_connected(True)
            log.info("registered in redis", redis=self.where, key=self.key, addr=self.addr,
                     heartbeat_ms=self.config.heartbeat_ms, ttl_ms=self.config.ttl_ms)  # fmt: skip
        except ConfigError:
            await self._client.aclose()
            raise
        except AuthenticationError as exc:
            await self._client.aclose()
            raise ConfigError(
                f"redis {self.where} refused the credentials: {exc}",
                hint="check the user and password in the URL (redis://user:pass@host:port/db)",
            ) from None
        except (RedisError, OSError) as exc:
            log.warning("redis unreachable; serving anyway and retrying", redis=self.where,
                        error=str(exc) or type(exc).__name__)  # fmt: skip
            await self._set_connected(False, exc)
        self._unsubscribe = self.worker.manager.subscribe(self._on_model_event)
        self._task = asyncio.create_task(self._heartbeat(), name="fleet-announce")

    async def aclose(self) -> None:
        """Stop heartbeating; leave the registry at once (delete the entry, publish ``down``)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                current = load_entry(await self._client.get(self.key))
                if current is None or current.get("addr") == f"grpc://{self.addr}":
                    await self._client.delete(self.key)
                await self._publish({"type": "down"})
                log.info("left the registry", redis=self.where, key=self.key)
        with contextlib.suppress(Exception):
            await self._client.aclose()

    # -- internals -------------------------------------------------------------------------

    async def _set_connected(self, connected: bool, exc: BaseException | None = None) -> None:
        self.connected = connected
        self.error = None if connected else f"redis {self.where} unreachable: {_why(exc)}"
        if self._on_change is None or self._reported is connected:
            return
        self._reported = connected
        try:
            await self._on_change(self)
        except Exception:  # reporting must never stop the heartbeat
            log.exception("registry state listener failed")

    def _on_model_event(self, event: str, model_id: str) -> None:
        """Model Manager callback (may come from any thread): hand it to the heartbeat task."""
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed: nothing to tell
            self._loop.call_soon_threadsafe(self._events.put_nowait, (event, model_id))

    async def _heartbeat(self) -> None:
        from redis.exceptions import RedisError

        period = self.config.heartbeat_ms / 1000
        pending: list[tuple[str, str]] = []
        while True:
            try:
                await self._announce()
                if not self.connected:
                    await self._publish({"type": "up"})
                    await self._set_connected(True)
                    log.info("redis reachable again; re-announced", redis=self.where)
                while pending:
                    event, model_id = pending[0]
                    await self._publish({"type": "model", "event": event, "model": model_id})
                    pending.pop(0)
            except (RedisError, OSError) as exc:
                if self.connected:
                    log.warning("redis unreachable; serving anyway and retrying",
                                redis=self.where, error=str(exc) or type(exc).__name__)  # fmt: skip
                await self._set_connected(False, exc)
                pending.clear()  # the entry written on reconnect carries the current state
            except Exception:
                log.exception("announce failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    pending.append(await self._events.get())
            while not self._events.empty():
                pending.append(self._events.get_nowait())

    async def _announce(self) -> None:
        assert self._client is not None
        entry = announcement(self.worker, self.addr, self.config)
        await self._client.set(self.key, json.dumps(entry), px=self.config.ttl_ms)

    async def _publish(self, message: dict[str, Any]) -> None:
        assert self._client is not None
        body = {
            **message,
            "worker": self.worker.name,
            "addr": f"grpc://{self.addr}",
            "resident_models": self.worker.manager.resident_ids(),
            "t": time.time(),
        }
        await self._client.publish(EVENTS_CHANNEL, json.dumps(body))

    async def _claim_name(self) -> None:
        """Refuse a name another live worker holds (its entry keeps being refreshed)."""
        assert self._client is not None
        held = load_entry(await self._client.get(self.key))
        if held is None or held.get("addr") == f"grpc://{self.addr}":
            return
        # Someone else's entry: a dead worker's lingers until it expires; a live one refreshes.
        wait_s = 2 * int(held.get("heartbeat_ms") or self.config.heartbeat_ms) / 1000
        await asyncio.sleep(min(wait_s, self.config.ttl_ms / 1000))
        again = load_entry(await self._client.get(self.key))
        if again is not None and again.get("heartbeat_unix") != held.get("heartbeat_unix"):
            raise ConfigError(
                f"worker name {self.worker.name!r} is already registered by {again.get('addr')} "
                f"(host {again.get('host', '?')}, pid {again.get('pid', '?')})",
                hint="names must be unique in a fleet: start this worker with --name",
            )
