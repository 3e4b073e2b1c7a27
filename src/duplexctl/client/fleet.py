"""Which workers a command talks to, and a connection that fails with a useful message.

Resolution, most specific first: ``--worker HOST:PORT``; ``--worker NAME`` of a daemon in the
state file `duplexctl up` keeps; every worker in that state file; else the embedded default,
``127.0.0.1:7001``. The API key comes from ``DUPLEX_API_KEY``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from duplexctl.supervise.state import StateStore
from duplexd.errors import DaemonUnavailable, InvalidArgument

if TYPE_CHECKING:
    from duplexd.tts.client import TTSClient

__all__ = ["DEFAULT_WORKER", "WorkerTarget", "api_key", "connect", "resolve_workers"]

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


def resolve_workers(
    selector: str | None = None, store: StateStore | None = None
) -> list[WorkerTarget]:
    """The workers a command addresses (see the module docstring); never empty."""
    state = (store or StateStore()).read()
    known = [WorkerTarget(w.name, w.addr) for w in state.workers()] if state else []
    if selector is None:
        return known or [WorkerTarget(DEFAULT_WORKER, DEFAULT_WORKER)]
    if ":" in selector:
        addr = selector.removeprefix("grpc://")
        return [next((t for t in known if t.addr == addr), WorkerTarget(addr, addr))]
    match = [t for t in known if t.name == selector]
    if match:
        return match
    names = ", ".join(t.name for t in known) or "none (nothing started with `duplexctl up`)"
    raise InvalidArgument(
        f"unknown worker {selector!r}; known workers: {names}",
        hint="give a daemon name from `duplexctl status` or an address HOST:PORT",
    )


@asynccontextmanager
async def connect(target: WorkerTarget, *, timeout_s: float = 3.0) -> AsyncIterator[TTSClient]:
    """A client whose worker has answered a GetCapabilities; unreachable → DaemonUnavailable."""
    from duplexd.tts.client import TTSClient  # grpc only when a command runs

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
