"""The Redis fleet registry: workers announce themselves, orchestrators discover them.

- `duplexd.fleet.announce`: the worker side (announcement JSON, heartbeat with expiry, model
  events published at once).
- `duplexd.fleet.discovery`: the orchestrator side (`RedisRegistry`, an orchestrator `Registry`
  whose worker list follows Redis and survives Redis outages), plus `read_announcements`.
- `duplexd.fleet.keys`: key and channel names, URL handling.

Nothing here is needed for the embedded default: without ``redis.url`` the static registry from
config is all there is.
"""

from __future__ import annotations

from duplexd.fleet.keys import EVENTS_CHANNEL, WORKER_PREFIX, redact_url, worker_key

__all__ = ["EVENTS_CHANNEL", "WORKER_PREFIX", "redact_url", "worker_key"]
