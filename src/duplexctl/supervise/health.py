"""Ping a daemon: gRPC GetCapabilities for a worker, HTTP GET /healthz for the orchestrator.

A pong is any answer from the daemon's own code: a worker that refuses our API key is alive
and well, just not ours to use. Only "cannot reach it in time" counts as a missed ping.
"""

# grpc and httpx load on first ping, so `duplexctl --help` stays instant

from __future__ import annotations

import os
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from duplexd.errors import DaemonUnavailable, DuplexError

if TYPE_CHECKING:
    from duplexd.rpc.client import TTSClient

__all__ = ["Pinger"]


class Pinger:
    """Reusable connections for repeated pings (the supervisor pings every few seconds)."""

    def __init__(self, timeout_s: float = 1.0, api_key: str | None = None) -> None:
        self.timeout_s = timeout_s
        self.api_key = api_key if api_key is not None else os.environ.get("DUPLEX_API_KEY")
        self._grpc: dict[str, TTSClient] = {}
        self._http: Any = None  # httpx.AsyncClient, created on the first orchestrator ping

    async def __aenter__(self) -> Pinger:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for client in self._grpc.values():
            await client.aclose()
        self._grpc.clear()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def ping(self, kind: str, addr: str) -> float:
        """Round trip in ms; raises DaemonUnavailable when there is no answer in time."""
        if kind == "orchestrator":
            return await self._ping_http(addr)
        return await self._ping_worker(addr)

    async def _ping_worker(self, addr: str) -> float:
        import asyncio

        client = self._worker_client(addr)
        try:
            # Connect first so the number is the RPC's round trip, not TCP setup.
            await asyncio.wait_for(client.channel.channel_ready(), self.timeout_s)
        except TimeoutError:
            raise DaemonUnavailable(f"{addr}: no connection within {self.timeout_s:g} s") from None
        started = time.perf_counter()
        try:
            await client.capabilities(timeout=self.timeout_s)
        except DaemonUnavailable:
            raise
        except DuplexError:
            pass  # refused (e.g. API key): the daemon answered, so it is alive
        return (time.perf_counter() - started) * 1000

    def _worker_client(self, addr: str) -> TTSClient:
        from duplexd.rpc.client import TTSClient

        if addr not in self._grpc:
            self._grpc[addr] = TTSClient(addr, api_key=self.api_key, timeout_s=self.timeout_s)
        return self._grpc[addr]

    async def _ping_http(self, addr: str) -> float:
        import httpx

        if self._http is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._http = httpx.AsyncClient(timeout=self.timeout_s, headers=headers)
        started = time.perf_counter()
        try:
            await self._http.get(f"http://{addr}/healthz")
        except httpx.HTTPError as exc:
            raise DaemonUnavailable(f"{addr}: {type(exc).__name__}: {exc}") from None
        return (time.perf_counter() - started) * 1000
