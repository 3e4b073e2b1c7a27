"""A session's lease on a TTS worker: bind, fall back, upgrade, and re-bind when a worker goes.

`bind()` asks routing for (worker, model) among the registry's healthy workers and starts a TTS
session there; a worker that refuses as unreachable is marked unhealthy and the next one is
tried. A fallback model (the requested one was not resident) is upgraded at the start of a
later turn once the requested model is resident somewhere. When a reply fails because its
worker is gone, the worker is marked unhealthy and `lost()` binds another; when it fails
because the worker no longer has the session (it restarted, or ended the session as idle:
NOT_FOUND), `lost()` starts a new one without blaming the worker.

While bound, `keepalive()` re-attaches to the worker session every `sessions.
worker_keepalive_s` (StartSession with the same id: the worker touches it, or creates it again
after a restart), so the worker's `session_idle_timeout_s` never ends the session of a caller
who is only quiet for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from duplexd.errors import DaemonUnavailable, DuplexError
from duplexd.logging import get_logger
from duplexd.orchestrator.deps import TtsApi
from duplexd.orchestrator.protocol import Hello
from duplexd.orchestrator.registry import Registry
from duplexd.orchestrator.reply import TtsBinding
from duplexd.orchestrator.routing import ModePolicy, choose

__all__ = ["WorkerBinding", "session_gone"]

log = get_logger("duplexd.orchestrator.binding")

Spawn = Callable[[Coroutine[Any, Any, None]], object]


class WorkerBinding:
    def __init__(
        self, registry: Registry, policy: ModePolicy, hello: Hello, session_id: str, spawn: Spawn
    ) -> None:
        self.registry, self.policy, self.hello = registry, policy, hello
        self.session_id, self.spawn = session_id, spawn
        self.current: TtsBinding | None = None

    async def bind(self, model_id: str | None, exclude: set[str] | None = None) -> TtsBinding:
        registry = self.registry
        exclude = set(exclude or ())
        for _attempt in range(len(registry.workers) or 1):
            candidates = [w for w in registry.healthy() if w.name not in exclude]
            route = choose(candidates, self.policy, model_id=model_id, language=self.hello.language)
            if route.preload is not None:
                target, wanted = route.preload
                self.spawn(_preload(target.client, wanted))
            try:
                resp = await route.worker.client.start_session(
                    model_id=route.model_id, voice=self.hello.voice or "",
                    language=self.hello.language or "",
                    session_id=f"{self.session_id}-{route.worker.name}",
                )  # fmt: skip
            except DaemonUnavailable as exc:
                registry.mark_unhealthy(route.worker.name, str(exc))
                exclude.add(route.worker.name)
                continue
            self.current = TtsBinding(route.worker.name, route.worker.client, resp.session_id,
                                      resp.model_id, fallback=route.fallback)  # fmt: skip
            return self.current
        raise DaemonUnavailable("no TTS worker accepted the session")

    async def ensure(self) -> tuple[TtsBinding, bool]:
        """The binding for the next reply, re-bound if its worker died; (binding, is_new)."""
        await self._maybe_upgrade()
        if self.current is not None:
            return self.current, False
        return await self.bind(self.hello.model), True

    async def lost(self, error: DuplexError) -> TtsBinding | None:
        """A reply failed: if its worker is gone, mark it and bind elsewhere; if the worker
        has lost the session (NOT_FOUND), start a new one (None: the binding is kept)."""
        if self.current is None:
            return None
        if session_gone(error):
            self.current = None
            return await self.bind(self.hello.model)
        if not isinstance(error, DaemonUnavailable):
            return None
        failed = self.current.worker
        self.registry.mark_unhealthy(failed, str(error))
        self.current = None
        return await self.bind(self.hello.model, exclude={failed})

    async def keepalive(self, every_s: float) -> None:
        """Until cancelled: re-attach to the worker session every `every_s` (see module doc)."""
        while True:
            await asyncio.sleep(every_s)
            tts = self.current
            if tts is None:
                continue
            try:
                await tts.client.start_session(
                    model_id=tts.model_id, voice=self.hello.voice or "",
                    language=self.hello.language or "", session_id=tts.session_id,
                )  # fmt: skip
            except DuplexError as exc:  # the next reply finds out and re-binds
                log.info("worker keepalive failed", session_id=self.session_id,
                         worker=tts.worker, error=str(exc))  # fmt: skip

    async def release(self) -> None:
        if self.current is not None:
            with contextlib.suppress(DuplexError):
                await self.current.client.end_session(self.current.session_id)

    async def _maybe_upgrade(self) -> None:
        """A fallback served earlier turns; switch once the requested model is resident."""
        if self.current is None or not self.current.fallback or not self.hello.model:
            return
        if any(self.hello.model in w.resident for w in self.registry.healthy()):
            await self.release()
            await self.bind(self.hello.model)


def session_gone(error: DuplexError) -> bool:
    """The worker answered NOT_FOUND to a session's stream or control: it has no such session
    (restarted, or ended it as idle); in a Synthesize call nothing else is looked up."""
    return error.status == "NOT_FOUND"


async def _preload(client: TtsApi, model_id: str) -> None:
    try:
        await client.load_model(model_id)
    except DuplexError as exc:
        log.warning("preload failed", model=model_id, error=str(exc))
