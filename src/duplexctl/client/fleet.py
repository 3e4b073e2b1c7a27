"""Which workers a command talks to, and a connection that fails with a useful message.

Resolution, most specific first: ``--worker HOST:PORT``; ``--worker NAME`` of a daemon in the
state file `duplexctl up` keeps (or of a worker registered in Redis, when a registry is given);
every worker in that state file (plus every registered one, when asked for); else the embedded
default, ``127.0.0.1:7001``. The API key comes from ``DUPLEX_API_KEY``.

The fleet registry is Redis: ``--redis URL`` or ``DUPLEX_REDIS_URL`` (see `redis_url`);
`registered_workers` reads what the workers announced there.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from duplexctl.supervise.state import StateStore
from duplexd.errors import DaemonUnavailable, InvalidArgument

if TYPE_CHECKING:
    from duplexd.rpc.client import TTSClient

__all__ = [
    "DEFAULT_WORKER",
    "WorkerTarget",
    "api_key",
    "connect",
    "redis_url",
    "registered_workers",
    "registry_entries",
    "resolve_workers",
]

DEFAULT_WORKER = "127.0.0.1:7001"
_HINT = "is it running? `duplexctl up` starts it, `duplexctl status` shows what runs"


@dataclass(frozen=True)
class WorkerTarget:
    """A worker to call: its daemon name when known (else its address) and its address."""

    name: str
    addr: str

    def __str__(self) -> str:
        return self.name if self.name == self.addr else f"{self.name} ({self.addr})"


def api_key() -> str | None:
    return os.environ.get("DUPLEX_API_KEY") or None


def redis_url(explicit: str | None = None) -> str | None:
    """The fleet registry to read: ``--redis``, else ``DUPLEX_REDIS_URL``, else none."""
    return explicit or os.environ.get("DUPLEX_REDIS_URL") or None


def registry_entries(url: str, *, timeout_s: float = 2.0) -> list[dict[str, Any]]:
    """Every worker announced in Redis (its JSON entry, plus ``expires_in_ms``).

    Unreachable Redis → DaemonUnavailable; refused credentials → AuthError."""
    import asyncio

    from duplexd.fleet.discovery import read_announcements

    return asyncio.run(read_announcements(url, timeout_s=timeout_s))


def registered_workers(url: str) -> list[WorkerTarget]:
    """The registered workers as targets (the address they advertise)."""
    return [
        WorkerTarget(str(e["name"]), str(e["addr"]).removeprefix("grpc://"))
        for e in registry_entries(url)
    ]


def resolve_workers(
    selector: str | None = None,
    store: StateStore | None = None,
    registered: Sequence[WorkerTarget] = (),
    *,
    whole_fleet: bool = False,
) -> list[WorkerTarget]:
    """The workers a command addresses (see the module docstring); never empty.

    `registered` (from `registered_workers`) makes registry names resolvable; with
    `whole_fleet` they are also part of the default selection."""
    state = (store or StateStore()).read()
    local = [WorkerTarget(w.name, w.addr) for w in state.workers()] if state else []
    known = local + [
        t for t in registered if all(t.addr != k.addr and t.name != k.name for k in local)
    ]
    if selector is None:
        chosen = known if whole_fleet else local
        return chosen or [WorkerTarget(DEFAULT_WORKER, DEFAULT_WORKER)]
    if ":" in selector:
        addr = selector.removeprefix("grpc://")
        return [next((t for t in known if t.addr == addr), WorkerTarget(addr, addr))]
    match = [t for t in known if t.name == selector]
    if match:
        return match
    names = ", ".join(t.name for t in known) or "none (nothing started with `duplexctl up`)"
    raise InvalidArgument(
        f"unknown worker {selector!r}; known workers: {names}",
        hint="give a daemon name from `duplexctl status` or an address HOST:PORT"
        + ("" if registered else "; workers of a fleet: add --redis URL (or DUPLEX_REDIS_URL)"),
    )


@asynccontextmanager
async def connect(target: WorkerTarget, *, timeout_s: float = 3.0) -> AsyncIterator[TTSClient]:
    """A client whose worker has answered a GetCapabilities; unreachable → DaemonUnavailable."""
    from duplexd.rpc.client import TTSClient  # grpc only when a command runs

    client = TTSClient(target.addr, api_key=api_key())
    try:
        try:
            await client.capabilities(timeout=timeout_s)
        except DaemonUnavailable:
            raise DaemonUnavailable(f"cannot reach worker {target}", hint=_HINT) from None
        yield client
    except DaemonUnavailable as exc:
        if exc.hint == _HINT:
            raise
        raise DaemonUnavailable(exc.message, hint=_HINT) from None
    finally:
        await client.aclose()
