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
from collections.abc import Callable
from typing import Any, Protocol

from duplexd.logging import get_logger

__all__ = ["Outbox", "Transport"]

log = get_logger("duplexd.orchestrator.transport")


class Transport(Protocol):
    async def send_event(self, event: dict[str, Any]) -> None: ...
    async def send_audio(self, message: bytes) -> None: ...


class Outbox:
    """Ordered events and audio for one client, bounded both ways.

    A client slower than real time would otherwise grow this without limit. Beyond
    `max_audio` frames the oldest audio is dropped (and counted) rather than the newest. Beyond
    `max_events` events the client is too far behind to be served: with `on_overflow`, all that
    is queued is dropped, later items are refused and `on_overflow(reason)` is called once (the
    WebSocket closes the session and tells the client why); without it, the oldest events go.
    A `force`d event (a fatal error: the last word to the client) is always queued.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        max_audio: int = 100,
        max_events: int = 1000,
        on_overflow: Callable[[str], None] | None = None,
    ) -> None:
        self.transport = transport
        self.max_audio = max_audio
        self.max_events = max_events
        self.on_overflow = on_overflow
        self._items: collections.deque[tuple[bool, Any]] = collections.deque()
        self._audio_count = 0
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0  # audio frames dropped for a slow client
        self.dropped_events = 0
        self.overflowed: str | None = None  # why the client was given up on
        self.frames_sent = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-writer")

    @property
    def queued_events(self) -> int:
        return len(self._items) - self._audio_count

    @property
    def queued_audio(self) -> int:
        return self._audio_count

    def event(self, event: dict[str, Any], *, force: bool = False) -> None:
        if self._closed and not force:
            return
        if self.overflowed is not None and not force:
            self.dropped_events += 1
            return
        if not force and self.queued_events >= self.max_events:
            if self.on_overflow is None:
                self._drop_oldest_event()
            else:
                self._overflow()
                return
        self._items.append((False, event))
        self._ready.set()

    def audio(self, message: bytes) -> None:
        if self._closed or self.overflowed is not None:
            return
        if self._audio_count >= self.max_audio:
            self._drop_oldest_audio()
        self._items.append((True, message))
        self._audio_count += 1
        self._ready.set()

    def take_unsent(self) -> list[dict[str, Any]]:
        """After `aclose`: the events the writer did not get to send (the client was not
        reading), for a last attempt straight on the transport; they are no longer queued."""
        events = [payload for is_audio, payload in self._items if not is_audio]
        self._items.clear()
        self._audio_count = 0
        return events

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

    def _drop_oldest_event(self) -> None:
        for i, (is_audio, _) in enumerate(self._items):
            if not is_audio:
                del self._items[i]
                self.dropped_events += 1
                return

    def _overflow(self) -> None:
        events, audio = self.queued_events, self._audio_count
        self.overflowed = (
            f"client not reading: {events} events and {audio} audio frames waiting to be sent"
        )
        self.dropped_events += events + 1
        self.dropped += audio
        self._items.clear()
        self._audio_count = 0
        log.warning("client too slow: send queue dropped", reason=self.overflowed)
        assert self.on_overflow is not None
        self.on_overflow(self.overflowed)

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
