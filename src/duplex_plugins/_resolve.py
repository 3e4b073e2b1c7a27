"""Finding a worker: an address, a daemon name, or the Redis fleet (see
`duplex_plugins._worker`)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any, Literal

from duplexd import errors

__all__ = [
    "DEFAULT_WORKER",
    "ResolvedWorker",
    "pick_from_fleet",
    "redis_from_env",
    "resolve_worker",
]

DEFAULT_WORKER = "127.0.0.1:7001"


@dataclass(frozen=True, slots=True)
class ResolvedWorker:
    name: str
    addr: str
    source: Literal["address", "daemon", "fleet", "default"]


def redis_from_env(explicit: str | None) -> str | None:
    return explicit or os.environ.get("DUPLEX_REDIS_URL") or None


def pick_from_fleet(entries: list[dict[str, Any]], model: str = "") -> dict[str, Any]:
    """The registered worker to use: one with `model` resident first, then the shortest queue,
    the fewest sessions, the best first-audio p50 (the orchestrator's order, from the
    announcements alone)."""
    if not entries:
        raise errors.DaemonUnavailable(
            "no TTS worker is registered in the fleet",
            hint="start one with `duplexd worker --redis URL` (or `duplexctl up`)",
        )

    def score(entry: dict[str, Any]) -> tuple[float, ...]:
        metrics = entry.get("metrics") or {}
        resident = entry.get("resident_models") or []
        wanted = model or entry.get("default_model") or ""
        return (
            0 if wanted in resident else 1,
            float(metrics.get("queue_depth") or 0),
            float(metrics.get("active_sessions") or 0),
            float(metrics.get("p50_ms") or 0),
        )

    return min(entries, key=score)


async def resolve_worker(
    worker: str | None = None, *, redis_url: str | None = None, model: str = ""
) -> ResolvedWorker:
    """Which worker a plugin talks to (see the module docstring).

    `worker` is ``HOST:PORT`` (``grpc://`` allowed), a daemon name, or None. `redis_url` (else
    ``DUPLEX_REDIS_URL``) makes fleet names resolvable and, without `worker`, picks from the
    fleet. Unknown names raise InvalidArgument listing the known ones.
    """
    if worker and ":" in worker:
        addr = worker.removeprefix("grpc://")
        return ResolvedWorker(addr, addr, "address")
    url = redis_from_env(redis_url)
    entries: list[dict[str, Any]] = []
    if url:
        from duplexd.fleet.discovery import read_announcements

        entries = await read_announcements(url)
    if not worker and url:
        entry = pick_from_fleet(entries, model)
        addr = str(entry["addr"]).removeprefix("grpc://")
        return ResolvedWorker(str(entry["name"]), addr, "fleet")
    from duplexctl.client.fleet import WorkerTarget, resolve_workers

    registered = [
        WorkerTarget(str(e["name"]), str(e["addr"]).removeprefix("grpc://")) for e in entries
    ]
    target = (await asyncio.to_thread(resolve_workers, worker or None, None, registered))[0]
    if not worker:
        source: Literal["daemon", "default"] = (
            "default" if target.addr == DEFAULT_WORKER else "daemon"
        )
        return ResolvedWorker(target.name, target.addr, source)
    fleet_names = {t.name for t in registered}
    return ResolvedWorker(target.name, target.addr, "fleet" if worker in fleet_names else "daemon")
