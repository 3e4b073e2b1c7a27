"""The seam between a session and how its audio travels: a `Transport` is a WebSocket
(`ws.WsTransport`) or a WebRTC peer (`webrtc.RtcTransport`); client messages from either go
through the one `dispatch.Dispatcher`.

A session writes events and audio into an `Outbox`; one writer task per connection drains it
into the transport, in order. Barge-in calls `flush_audio()`: queued reply audio is dropped on
the spot, so nothing already generated keeps playing, while events still go out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from typing import Any, Protocol

from duplexd.logging import get_logger

__all__ = ["Outbox", "Transport"]

log = get_logger("duplexd.orchestrator.transport")


class Transport(Protocol):
    async def send_event(self, event: dict[str, Any]) -> None: ...
    async def send_audio(self, message: bytes) -> None: ...


class Outbox:
    """Ordered events and audio for one client, with a bound on queued audio.

    A client slower than real time would otherwise grow this without limit; beyond
    `max_audio` frames the oldest audio is dropped (and counted) rather than the newest.
    """

    def __init__(self, transport: Transport, *, max_audio: int = 100) -> None:
        self.transport = transport
        self.max_audio = max_audio
        self._items: collections.deque[tuple[bool, Any]] = collections.deque()
        self._audio_count = 0
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0
        self.frames_sent = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-writer")

    def event(self, event: dict[str, Any]) -> None:
        if not self._closed:
            self._items.append((False, event))
            self._ready.set()

    def audio(self, message: bytes) -> None:
        if self._closed:
            return
        if self._audio_count >= self.max_audio:
            self._drop_oldest_audio()
        self._items.append((True, message))
        self._audio_count += 1
        self._ready.set()

    def flush_audio(self) -> int:
        """Drop every queued audio frame; returns how many."""
        kept = collections.deque(item for item in self._items if not item[0])
        dropped = len(self._items) - len(kept)
        self._items, self._audio_count = kept, 0
        return dropped

    def _drop_oldest_audio(self) -> None:
        for i, (is_audio, _) in enumerate(self._items):
            if is_audio:
                del self._items[i]
                self._audio_count -= 1
                self.dropped += 1
                return

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            while self._items:
                is_audio, payload = self._items.popleft()
                if is_audio:
                    self._audio_count -= 1
                    await self.transport.send_audio(payload)
                    self.frames_sent += 1
                else:
                    await self.transport.send_event(payload)
            self._ready.clear()
            if self._closed:
                return

    async def aclose(self, *, drain_s: float = 1.0) -> None:
        """Send what is queued (up to `drain_s`), then stop the writer."""
        self._closed = True
        self._ready.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), drain_s)
        except (TimeoutError, ConnectionError):
            pass
        except Exception as exc:  # a dead socket while draining is not our error
            log.info("outbox closed with error", error=str(exc))
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


def dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))
