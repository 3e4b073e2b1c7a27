"""The orchestrator side of the registry: a worker list that follows Redis.

`RedisRegistry` is a `Registry` (the orchestrator's protocol: `workers`, `healthy()`,
`mark_unhealthy()`, `start()`, `aclose()`, `changed`) around a `WorkerPool` that polls its
handles, so sessions and routing do not know which one they use:

- the static workers from config stay in it (never removed, as in the embedded default);
- a worker announced in Redis is added the moment it is seen (``up`` on ``duplex:events``, or
  the next scan), polled over gRPC at once and then every second like a static one;
- a ``model`` event re-polls that worker at once, so routing sees a fresh load in milliseconds;
- a worker whose entry expired (it stopped heartbeating) is removed; a graceful ``down``
  removes it at once;
- when Redis goes away nothing is removed: routing goes on over the last known registry (gRPC
  polling still marks dead workers unhealthy), and the registry reconnects with backoff. After
  a reconnect (or a restart noticed by Redis's ``run_id``), entries get two heartbeats to
  reappear (a restarted Redis starts empty; workers re-announce on their next heartbeat)
  before anything is dropped.

`read_announcements(url)` is the one-shot read for tools (`duplexctl status`, `models list`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING, Any

from duplexd.aio import TaskSet, cancel_and_wait
from duplexd.config import RedisConfig, WorkerEndpoint
from duplexd.errors import AuthError, ConfigError, DaemonUnavailable
from duplexd.fleet.keys import (
    EVENTS_CHANNEL,
    load_entry,
    name_from_key,
    open_redis,
    redact_url,
    worker_key,
    worker_pattern,
)
from duplexd.logging import get_logger
from duplexd.orchestrator.deps import TtsApi
from duplexd.orchestrator.registry import ClientFactory, WorkerHandle, WorkerPool

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisRegistry", "parse_announcement", "read_announcements"]

log = get_logger("duplexd.fleet.discovery")

_BACKOFF_MIN_S = 0.25
_BACKOFF_MAX_S = 5.0
_RETIRED_CLOSE_S = 60.0  # a removed worker's channel stays open this long for bound sessions


def parse_announcement(raw: str | bytes | None) -> dict[str, Any] | None:
    """A worker entry as a dict, or None when it is not a usable announcement."""
    data = load_entry(raw)
    if data is None or not data.get("name") or not data.get("addr"):
        return None
    return data


def _addr(entry: dict[str, Any]) -> str:
    return str(entry["addr"]).removeprefix("grpc://")


async def read_announcements(url: str, *, timeout_s: float = 2.0) -> list[dict[str, Any]]:
    """Every live worker entry, sorted by name, each with ``expires_in_ms`` added."""
    from redis.exceptions import AuthenticationError, RedisError

    client = open_redis(url, timeout_s=timeout_s)
    try:
        keys = [k async for k in client.scan_iter(match=worker_pattern(), count=500)]
        if not keys:
            return []
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
                pipe.pttl(key)
            replies = await pipe.execute()
    except AuthenticationError as exc:
        raise AuthError(f"redis {redact_url(url)} refused the credentials: {exc}") from None
    except (RedisError, OSError) as exc:
        raise DaemonUnavailable(
            f"cannot reach redis at {redact_url(url)}: {exc or type(exc).__name__}",
            hint="is redis-server running and the URL right? (DUPLEX_REDIS_URL / --redis)",
        ) from None
    finally:
        await client.aclose()
    out = []
    for key, raw, pttl in zip(keys, replies[::2], replies[1::2], strict=True):
        entry = parse_announcement(raw)
        if entry is not None and entry["name"] == name_from_key(key):
            entry["expires_in_ms"] = pttl
            out.append(entry)
    return sorted(out, key=lambda e: str(e["name"]))


class RedisRegistry:
    """Static workers from config plus every worker announced in Redis (see module doc)."""

    def __init__(
        self,
        endpoints: list[WorkerEndpoint],
        redis: RedisConfig,
        *,
        api_key: str | None = None,
        period_s: float = 1.0,
        clients: ClientFactory | None = None,
    ) -> None:
        self.pool = WorkerPool(endpoints, api_key=api_key, period_s=period_s, clients=clients)
        self.workers = self.pool.workers
        self.changed = self.pool.changed
        if not redis.url:
            raise ConfigError("RedisRegistry needs redis.url")
        self.url = redis.url
        self.config = redis
        self.connected = False
        self._connected_since = 0.0  # monotonic; grace for entries after a (re)connect
        self._missing: dict[str, float] = {}  # redis workers absent from the last scans
        self._run_id: str | None = None  # the Redis server's run id: a change = a restart
        self._conflicts: set[str] = set()  # static names announced elsewhere (warned once)
        self._watch_task: asyncio.Task[None] | None = None
        self._first_attempt = asyncio.Event()
        self._fatal: Exception | None = None
        self._background = TaskSet(log=log, failure_event="registry task failed")
        self._retired: list[TtsApi] = []
        self._backoff = _BACKOFF_MIN_S

    def healthy(self) -> list[WorkerHandle]:
        return self.pool.healthy()

    def mark_unhealthy(self, name: str, reason: str) -> None:
        self.pool.mark_unhealthy(name, reason)

    @property
    def where(self) -> str:
        return redact_url(self.url)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Poll the static workers, then read Redis once (briefly) before the first caller."""
        await self.pool.start()
        self._watch_task = asyncio.create_task(self._watch(), name="registry-redis")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self._first_attempt.wait()
        if self._fatal is not None:
            await self.aclose()
            raise self._fatal

    async def aclose(self) -> None:
        await cancel_and_wait(self._watch_task)
        await self._background.cancel_all()
        for client in self._retired:
            await client.aclose()
        self._retired.clear()
        await self.pool.aclose()

    # -- the watch loop --------------------------------------------------------------------

    async def _watch(self) -> None:
        from redis.exceptions import AuthenticationError, RedisError

        while True:
            try:
                await self._follow()
            except AuthenticationError as exc:
                error: Exception = ConfigError(
                    f"redis {self.where} refused the credentials: {exc}",
                    hint="check the user and password in the URL (redis://user:pass@host/db)",
                )
                if not self._first_attempt.is_set():
                    self._fatal = error
                    self._first_attempt.set()
                    return
                self._lost(str(error))
            except (RedisError, OSError) as exc:
                self._lost(str(exc) or type(exc).__name__)
            except Exception as exc:  # a bug must not end discovery: log it, reconnect
                log.exception("registry watch failed", error=repr(exc))
                self._lost(repr(exc))
            self._first_attempt.set()
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, _BACKOFF_MAX_S)

    def _lost(self, error: str) -> None:
        if self.connected or not self._first_attempt.is_set():
            log.warning("redis unreachable; routing over the last known registry",
                        redis=self.where, error=error, workers=sorted(self.workers))  # fmt: skip
        self.connected = False

    async def _follow(self) -> None:
        """One connection: subscribe, scan, then handle events and rescan until it fails."""
        client = open_redis(self.url)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(EVENTS_CHANNEL)  # before the scan: no event falls between
            self._connected_since = time.monotonic()
            self._missing.clear()
            await self._scan(client)
            if not self.connected:
                log.info("redis connected" if not self._first_attempt.is_set()
                         else "redis reachable again", redis=self.where,
                         workers=sorted(self.workers))  # fmt: skip
            self.connected, self._backoff = True, _BACKOFF_MIN_S
            self._first_attempt.set()
            period = self.config.heartbeat_ms / 1000
            next_scan = time.monotonic() + period
            while True:
                wait = min(max(next_scan - time.monotonic(), 0.0), 1.0)
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
                if msg is not None:
                    await self._on_event(client, msg.get("data"))
                if time.monotonic() >= next_scan:
                    await self._scan(client)
                    next_scan = time.monotonic() + period
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            with contextlib.suppress(Exception):
                await client.aclose()

    async def _scan(self, client: Redis) -> None:
        await self._check_restart(client)
        keys = [k async for k in client.scan_iter(match=worker_pattern(), count=500)]
        values = await client.mget(keys) if keys else []
        seen: dict[str, dict[str, Any]] = {}
        for key, raw in zip(keys, values, strict=True):
            entry = parse_announcement(raw)
            if entry is not None and entry["name"] == name_from_key(key):
                seen[str(entry["name"])] = entry
        fresh = [h for e in seen.values() if (h := self._upsert(e)) is not None]
        now = time.monotonic()
        for name, handle in list(self.workers.items()):
            if name in seen:
                self._missing.pop(name, None)
                continue
            if handle.source != "redis":
                handle.announcement = None
                continue
            grace = self._grace_s(handle)
            if now - self._connected_since < grace:
                continue  # just (re)connected: a restarted Redis fills up on the next heartbeats
            since = self._missing.setdefault(name, now)
            if self._run_id is not None or now - since >= grace:  # no run id: wait a grace too
                self._remove(name, "its registry entry expired (no heartbeat)")
        if fresh:  # poll newcomers now, so the next session can already be routed to them
            await asyncio.gather(*(self.pool.refresh_one(h) for h in fresh))

    async def _check_restart(self, client: Redis) -> None:
        """A Redis restarted behind a live connection starts empty: treat it as a reconnect."""
        from redis.exceptions import ResponseError

        try:
            run_id = (await client.info("server")).get("run_id")
        except ResponseError:  # INFO disabled (some managed services): rely on grace alone
            run_id = None
        if run_id != self._run_id:
            if self._run_id is not None and self.connected:  # not noticed as a disconnect
                log.info("redis restarted; waiting for the workers to re-announce",
                         redis=self.where)  # fmt: skip
                self._connected_since = time.monotonic()
                self._missing.clear()
            self._run_id = run_id

    def _grace_s(self, handle: WorkerHandle) -> float:
        """After a (re)connect, how long entries may be absent before workers are dropped: two
        heartbeats (a restarted Redis is empty until every worker's next heartbeat)."""
        announced = (handle.announcement or {}).get("heartbeat_ms")
        heartbeat_ms = announced if isinstance(announced, int) else self.config.heartbeat_ms
        return 2 * heartbeat_ms / 1000

    async def _on_event(self, client: Redis, data: Any) -> None:
        try:
            event = json.loads(data)
            name = str(event["worker"])
            kind = str(event.get("type", ""))
        except (ValueError, TypeError, KeyError):
            return
        if kind == "down":
            handle = self.workers.get(name)
            if handle is not None and handle.source == "redis":
                self._remove(name, "it left the registry (shutting down)")
            elif handle is not None:
                self.mark_unhealthy(name, "shutting down")
            return
        entry = parse_announcement(await client.get(worker_key(name)))
        if entry is None:
            return
        handle = self._upsert(entry) or self.workers.get(name)
        if handle is not None:
            if kind == "model":
                log.info("worker model event", worker=name, change=event.get("event"),
                         model=event.get("model"))  # fmt: skip
            self._spawn(self._refresh_and_signal(handle))

    async def _refresh_and_signal(self, handle: WorkerHandle) -> None:
        await self.pool.refresh_one(handle)
        self.changed.set()

    # -- the worker list -------------------------------------------------------------------

    def _upsert(self, entry: dict[str, Any]) -> WorkerHandle | None:
        """Record an announcement; returns the handle when it is new (needs a first poll)."""
        name, addr = str(entry["name"]), _addr(entry)
        handle = self.workers.get(name)
        if handle is not None and handle.source == "static" and handle.addr != addr:
            if name not in self._conflicts:
                self._conflicts.add(name)
                log.warning("announced address differs from the static config; keeping the "
                            "configured one", worker=name, configured=handle.addr,
                            announced=addr)  # fmt: skip
            return None
        if handle is not None and handle.addr != addr:  # restarted elsewhere under its name
            self._remove(name, f"it moved to {addr}")
            handle = None
        if handle is not None:
            handle.announcement = entry
            return None
        client = self.pool.clients(addr)
        handle = WorkerHandle(name, addr, client, source="redis", announcement=entry)
        self.workers[name] = handle
        self._missing.pop(name, None)
        log.info("worker joined", worker=name, addr=addr, host=entry.get("host"),
                 resident=entry.get("resident_models"))  # fmt: skip
        self.changed.set()
        return handle

    def _remove(self, name: str, reason: str) -> None:
        handle = self.workers.pop(name, None)
        self._missing.pop(name, None)
        if handle is None:
            return
        handle.healthy, handle.last_error = False, reason
        log.warning("worker left the registry", worker=name, addr=handle.addr, reason=reason)
        self.changed.set()
        # Sessions bound to it may still be finishing a reply: close its channel later.
        self._retired.append(handle.client)
        self._spawn(self._close_later(handle.client))

    async def _close_later(self, client: TtsApi) -> None:
        await asyncio.sleep(_RETIRED_CLOSE_S)
        if client in self._retired:
            self._retired.remove(client)
            await client.aclose()

    def _spawn(self, coro: Any) -> None:
        self._background.spawn(coro)
