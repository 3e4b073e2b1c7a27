"""Which daemons a command talks to, and a connection that fails with a useful message.

Workers, most specific first: ``--worker HOST:PORT``; ``--worker NAME`` of a daemon in the
state file `duplexctl up` keeps (or of a worker registered in Redis, when a registry is given);
every worker in that state file (plus every registered one, when asked for); else the embedded
default, ``127.0.0.1:7001``. The API key comes from ``DUPLEX_API_KEY``.

The orchestrator (`talk`, `demo`): ``--url HOST:PORT`` (or a ``ws://`` URL) as given; ``--url
NAME`` of an orchestrator in that state file; without one, the orchestrator `duplexctl up`
started, whatever its port (`resolve_orchestrator`); the caller then tries the default address
and, failing that, starts a private stack (`client.embedded.orchestrator_for`).

The fleet registry is Redis: ``--redis URL`` or ``DUPLEX_REDIS_URL`` (see `redis_url`);
`registered_workers` reads what the workers announced there.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from duplexctl.supervise.state import DaemonRecord, StateStore
from duplexd.errors import DaemonUnavailable, InvalidArgument

if TYPE_CHECKING:
    from duplexd.rpc.client import TTSClient

__all__ = [
    "DEFAULT_WORKER",
    "WorkerTarget",
    "api_key",
    "connect",
    "orchestrator_hint",
    "redis_url",
    "registered_workers",
    "registry_entries",
    "resolve_orchestrator",
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


def _running_orchestrators(store: StateStore | None) -> list[DaemonRecord]:
    """The orchestrators `duplexctl up` started whose process still lives."""
    state = (store or StateStore()).read()
    if state is None:
        return []
    return [d for d in state.daemons if d.kind == "orchestrator" and d.addr and d.alive()]


def resolve_orchestrator(
    selector: str | None = None, store: StateStore | None = None
) -> str | None:
    """The orchestrator's HOST:PORT (or URL) for `selector` (see the module docstring).

    An address is returned as given; a name must be an orchestrator of the state file (else
    InvalidArgument naming the known ones); None picks the running one `duplexctl up` started,
    or returns None when there is none."""
    if selector is None:
        running = _running_orchestrators(store)
        return running[0].addr if running else None
    if ":" in selector or "/" in selector:
        return selector
    state = (store or StateStore()).read()
    daemons = state.daemons if state else []
    found = next((d for d in daemons if d.name == selector), None)
    if found is not None and found.kind == "orchestrator" and found.addr:
        return found.addr
    known = ", ".join(d.name for d in daemons if d.kind == "orchestrator")
    if found is None:
        what = f"unknown orchestrator {selector!r}"
    else:
        what = f"{selector!r} is a {found.kind}, not an orchestrator"
    raise InvalidArgument(
        f"{what}; known orchestrators: {known or 'none (nothing started with `duplexctl up`)'}",
        hint="give a daemon name from `duplexctl status` or an address HOST:PORT",
    )


def orchestrator_hint(addr: str, store: StateStore | None = None) -> str:
    """What to do about an orchestrator at `addr` that does not answer: never "start it" when
    one runs."""
    from duplexctl.client.embedded import probe

    netloc = urlsplit(addr).netloc if "://" in addr else addr
    if probe(netloc):
        return f"{netloc} answers /healthz but not the WebSocket: check the URL (ws://HOST:PORT/ws)"
    running = _running_orchestrators(store)
    here = next((d for d in running if d.addr == netloc), None)
    if here is not None:
        return (
            f"`duplexctl up` runs {here.name} there (pid {here.pid}, {here.state}) but it does "
            f"not answer: `duplexctl status`, `duplexctl logs {here.name}`"
        )
    if running:
        where = ", ".join(f"{d.name} at {d.addr}" for d in running)
        return f"`duplexctl up` runs {where}: `--url {running[0].name}` (or no --url)"
    return "start one: `duplexctl up` (`duplexctl status` shows what runs)"


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
