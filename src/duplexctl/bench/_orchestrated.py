"""Shared by the suites that need the orchestrator (bargein, e2e): a private orchestrator in
front of the worker under test, and a scripted user over the real WebSocket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from duplexctl.bench.context import BenchContext
from duplexd.devkit.procs import start_daemon

__all__ = ["is_kind", "orchestrator"]


@asynccontextmanager
async def orchestrator(
    ctx: BenchContext, *, env: dict[str, str] | None = None
) -> AsyncIterator[str]:
    """An orchestrator routed to the worker under test (`env`: DUPLEX_* settings for it),
    stopped afterwards."""
    worker = await ctx.worker()
    folder = ctx.workdir / f"orchestrator-{len(list(ctx.workdir.glob('orchestrator-*')))}"
    proc = await asyncio.to_thread(
        start_daemon, "orchestrator", folder, ["--worker", f"bench={worker}"], env=env
    )
    try:
        yield proc.addr
    finally:
        await asyncio.to_thread(proc.stop)


def is_kind(kind: str, **fields: Any) -> Any:
    return lambda ev: ev["type"] == kind and all(ev.get(k) == v for k, v in fields.items())
