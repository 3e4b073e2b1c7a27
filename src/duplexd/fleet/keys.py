"""Names in Redis, and opening a client from a URL: everything both sides of the registry share.

Layout (design section 6):

- ``duplex:workers:<name>``: one string per live worker holding its announcement (JSON), set
  with a ``PX`` expiry of ``redis.ttl_ms`` and refreshed every ``redis.heartbeat_ms``: a worker
  that stops heartbeating drops out by itself.
- ``duplex:events``: a pub/sub channel; workers publish ``{"type": "up" | "down" | "model",
  "worker": name, ...}`` the moment something changes, so orchestrators need not wait for the
  next scan.

This module imports no Redis code at import time, so `duplexctl` can use the names and
`redact_url` without paying for the client.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from duplexd.errors import ConfigError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "EVENTS_CHANNEL",
    "WORKER_PREFIX",
    "name_from_key",
    "open_redis",
    "redact_url",
    "worker_key",
    "worker_pattern",
]

WORKER_PREFIX = "duplex:workers:"
EVENTS_CHANNEL = "duplex:events"


def worker_key(name: str) -> str:
    return f"{WORKER_PREFIX}{name}"


def worker_pattern() -> str:
    """SCAN pattern matching every worker key."""
    return f"{WORKER_PREFIX}*"


def name_from_key(key: str) -> str:
    return key.removeprefix(WORKER_PREFIX)


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for logs and terminal output)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid redis url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{user}:***@{host}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def open_redis(url: str, *, timeout_s: float = 2.0) -> Redis:
    """An asyncio client for ``redis://[user:pass@]host:port/db`` or ``rediss://`` (TLS).

    Commands fail fast (one quick retry for a stale pooled connection, then the error) so the
    callers' own reconnect loops decide how long to wait, not the client's default backoff.
    """
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"redis.url {redact_url(url)!r}: expected redis://, rediss:// or unix://",
            hint="e.g. redis://localhost:6379/0 or rediss://user:pass@host:6380/0",
        )
    try:
        client: Redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
        )
    except ValueError as exc:
        raise ConfigError(f"redis.url {redact_url(url)!r}: {exc}") from None
    return client


def load_entry(raw: str | bytes | None) -> dict[str, Any] | None:
    """A Redis value as a JSON object, or None (absent, not JSON, not an object)."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
