"""How the console finds and reaches daemons: `fleet` resolves `--worker NAME|ADDR` to workers."""

from __future__ import annotations

from duplexctl.client.fleet import DEFAULT_WORKER, WorkerTarget, api_key, connect, resolve_workers

__all__ = ["DEFAULT_WORKER", "WorkerTarget", "api_key", "connect", "resolve_workers"]
