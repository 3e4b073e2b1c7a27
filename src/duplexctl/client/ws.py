"""A WebSocket client for the orchestrator's protocol, and conversations run from files.

`VoiceClient` is the thin async wrapper (`talk`, `demo`, `bench` and the tests use it).
`run_file_conversation` plays a WAV as the microphone in real time and records what the
speaker would have played on the same timeline, through the same jitter buffer as `talk`,
writing every event as a JSON line: for scripting, tests and bug reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from duplexd.audio.frames import FRAME_MS, frame_samples
from duplexd.audio.jitter import JitterBuffer
from duplexd.errors import AuthError, DaemonUnavailable, DuplexError, InvalidArgument
from duplexd.orchestrator.protocol import unpack_audio

__all__ = ["Conversation", "VoiceClient", "run_file_conversation"]


@dataclass
class Received:
    """One thing from the server: an event (dict) or an audio frame (seq, turn, flags, pcm)."""

    t: float
    event: dict[str, Any] | None = None
    audio: tuple[int, int, int, bytes] | None = None


class VoiceClient:
    def __init__(self, url: str, hello: dict[str, Any]) -> None:
        self.url = url if "://" in url else f"ws://{url}/ws"
        self.hello = {"type": "hello", "version": 1, "sample_rate": 16_000, **hello}
        self._http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.ready: dict[str, Any] = {}

    async def __aenter__(self) -> VoiceClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def connect(self, timeout_s: float = 60.0) -> dict[str, Any]:
        self._http = aiohttp.ClientSession()
        try:
            self.ws = await self._http.ws_connect(self.url, heartbeat=20.0)
        except aiohttp.ClientError as exc:
            await self.aclose()
            raise DaemonUnavailable(
                f"orchestrator at {self.url} unreachable: {exc}", hint="start it: `duplexctl up`"
            ) from None
        await self.ws.send_str(json.dumps(self.hello))
        async with asyncio.timeout(timeout_s):
            while True:
                item = await self.receive()
                if item is None:
                    raise DaemonUnavailable(f"orchestrator at {self.url} closed the connection")
                if item.event and item.event["type"] == "error" and item.event.get("fatal"):
                    await self.aclose()
                    raise _error_of(item.event)
                if item.event and item.event["type"] == "ready":
                    self.ready = item.event
                    return item.event

    async def receive(self) -> Received | None:
        assert self.ws is not None
        msg = await self.ws.receive()
        now = time.perf_counter()
        if msg.type == aiohttp.WSMsgType.TEXT:
            return Received(now, event=json.loads(msg.data))
        if msg.type == aiohttp.WSMsgType.BINARY:
            return Received(now, audio=unpack_audio(msg.data))
        return None

    async def messages(self) -> AsyncIterator[Received]:
        while (item := await self.receive()) is not None:
            yield item

    async def send_audio(self, pcm: bytes) -> None:
        assert self.ws is not None
        await self.ws.send_bytes(pcm)

    async def send_json(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(message))

    async def aclose(self) -> None:
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(Exception):
                await self.ws.send_str(json.dumps({"type": "end"}))
            await self.ws.close()
        if self._http is not None:
            await self._http.close()


def _error_of(ev: dict[str, Any]) -> DuplexError:
    code, message = ev.get("code", ""), ev.get("message", "")
    if code == "unauthenticated":
        return AuthError(message, hint="set DUPLEX_API_KEY to the orchestrator's key")
    if code in ("invalid_argument",):
        return InvalidArgument(message)
    return DaemonUnavailable(message) if code in ("unavailable", "busy") else DuplexError(message)


@dataclass
class Conversation:
    """What a file conversation produced, on the mic's timeline (t_ms from its first frame)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    mic: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))  # at 48 kHz
    speaker: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))  # 48 kHz
    frames_received: int = 0
    underruns: int = 0
    audio_log: list[tuple[float, int]] = field(default_factory=list)  # (t_ms, turn) per frame

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


async def run_file_conversation(
    url: str,
    mic_16k: np.ndarray,
    *,
    hello: dict[str, Any] | None = None,
    tail_ms: int = 4000,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> Conversation:
    """Stream `mic_16k` (int16 at 16 kHz) in real time, then `tail_ms` of silence, and record."""
    conv = Conversation()
    step = frame_samples(16_000)
    silence = np.zeros(step * (tail_ms // FRAME_MS), np.int16)
    mic = np.concatenate([mic_16k.astype(np.int16), silence])
    n_frames = len(mic) // step
    jitter = JitterBuffer()
    speaker: list[bytes] = []
    async with VoiceClient(url, hello or {}) as client:
        t0 = time.perf_counter()

        def stamp(ev: dict[str, Any]) -> None:
            ev = {**ev, "t_ms": round((time.perf_counter() - t0) * 1000, 1)}
            conv.events.append(ev)
            if on_event is not None:
                on_event(ev)

        stamp(client.ready)

        async def reader() -> None:
            async for item in client.messages():
                if item.audio is not None:
                    conv.frames_received += 1
                    conv.audio_log.append((round((item.t - t0) * 1000, 1), item.audio[1]))
                    jitter.push(item.audio[3])
                elif item.event is not None:
                    if item.event["type"] == "flush":
                        jitter.flush()
                    stamp(item.event)

        task = asyncio.create_task(reader())
        try:
            for i in range(n_frames):
                await client.send_audio(mic[i * step : (i + 1) * step].tobytes())
                speaker.append(jitter.pop())  # the speaker plays on the mic's clock
                delay = t0 + (i + 1) * FRAME_MS / 1000 - time.perf_counter()
                await asyncio.sleep(max(delay, 0))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    conv.speaker = np.frombuffer(b"".join(speaker), dtype="<i2").astype(np.int16)
    from duplexd.audio.resample import resample_once

    conv.mic = resample_once(mic[: n_frames * step], 16_000, 48_000)
    conv.underruns = jitter.stats.underruns
    return conv


def write_events(path: Path, events: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
