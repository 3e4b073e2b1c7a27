"""A WebSocket client for the orchestrator's protocol, and conversations run from files.

`VoiceClient` is the thin async wrapper (`talk`, `demo`, `bench` and the tests use it). With
`codec="opus"` (or `"codec": "opus"` in the hello) it encodes the mic frames it sends and decodes
the reply audio it receives, so callers always deal in PCM frames.
`run_file_conversation` plays a WAV as the microphone in real time and records what the
speaker would have played on the same timeline, through the same jitter buffer as `talk`,
writing every event as a JSON line: for scripting, tests and bug reports. What the speaker
played of each reply is tracked clause by clause (`client.heard`): the client's record of each
`turn` event carries it as `heard`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np

from duplexctl.client.heard import Clause, HeardText
from duplexd.audio.frames import FRAME_MS, frame_samples
from duplexd.audio.jitter import JitterBuffer
from duplexd.audio.resample import StreamResampler
from duplexd.errors import AuthError, DaemonUnavailable, DuplexError, InvalidArgument
from duplexd.orchestrator.protocol import unpack_audio

if TYPE_CHECKING:
    from duplexd.audio.opus import OpusDecoder, OpusEncoder

__all__ = [
    "Conversation",
    "LiveConversation",
    "VoiceClient",
    "run_file_conversation",
    "write_events",
]


@dataclass
class Received:
    """One thing from the server: an event (dict) or an audio frame (seq, turn, flags, pcm)."""

    t: float
    event: dict[str, Any] | None = None
    audio: tuple[int, int, int, bytes] | None = None


class VoiceClient:
    """One session over the WebSocket protocol.

    `codec` ("pcm", the default, or "opus"; also read from the hello) is negotiated in the
    hello; `send_audio` always takes 20 ms PCM frames at the hello's rate and received audio is
    always 1920 bytes of 48 kHz PCM, whatever travels on the wire. `bytes_sent` and
    `bytes_received` count the audio payload bytes on the wire.
    """

    def __init__(self, url: str, hello: dict[str, Any], *, codec: str | None = None) -> None:
        self.url = url if "://" in url else f"ws://{url}/ws"
        self.hello = {"type": "hello", "version": 1, "sample_rate": 16_000, **hello}
        self.codec = str(codec or self.hello.get("codec") or "pcm")
        if self.codec != "pcm":
            self.hello["codec"] = self.codec
        self._http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.ready: dict[str, Any] = {}
        self._encoder: OpusEncoder | None = None
        self._decoder: OpusDecoder | None = None
        self.bytes_sent = 0
        self.bytes_received = 0

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
            from duplexctl.client.fleet import orchestrator_hint

            raise DaemonUnavailable(
                f"orchestrator at {self.url} unreachable: {exc}",
                hint=await asyncio.to_thread(orchestrator_hint, self.url),
            ) from None
        if self.codec == "opus":
            from duplexd.audio.opus import OpusDecoder, OpusEncoder

            self._encoder = OpusEncoder(int(self.hello["sample_rate"]))
            self._decoder = OpusDecoder(48_000)
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
            self.bytes_received += len(msg.data)
            if self._decoder is None:
                return Received(now, audio=unpack_audio(msg.data))
            seq, turn, flags, packet = unpack_audio(msg.data, "opus")
            return Received(now, audio=(seq, turn, flags, self._decoder.decode_frame(packet)))
        return None

    async def messages(self) -> AsyncIterator[Received]:
        while (item := await self.receive()) is not None:
            yield item

    async def send_audio(self, pcm: bytes) -> None:
        """One 20 ms PCM frame at the hello's rate (encoded here when the codec is opus)."""
        assert self.ws is not None
        data = self._encoder.encode(pcm) if self._encoder is not None else pcm
        self.bytes_sent += len(data)
        await self.ws.send_bytes(data)

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


_FIRST, _LAST = 1, 2


@dataclass
class Conversation:
    """What a conversation produced, on the mic's timeline (t_ms from its first frame)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    mic: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))  # at 48 kHz
    speaker: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))  # 48 kHz
    frames_received: int = 0
    underruns: int = 0
    audio_log: list[tuple[float, int]] = field(default_factory=list)  # (t_ms, turn) per frame
    # (first frame sent, end of last frame sent) of each scripted utterance, in t_ms
    utterances: list[tuple[float, float | None]] = field(default_factory=list)
    capped: bool = False  # `until_quiet` gave up: a reply was still going (or pending)
    lost: str | None = None  # the orchestrator went away before the end: why

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


class LiveConversation:
    """A microphone and a speaker on one 20 ms clock, talking to the orchestrator.

    The mic sends queued user speech (16 kHz int16), silence otherwise; the speaker plays
    through the same jitter buffer `talk` uses, flushed on `flush`. A script can `say()` and
    `wait_for()` events, so a scripted user can react to the bot (the demo barges in
    two seconds into a story); a file conversation queues one file and waits it out
    (`until_quiet`). `on_heard(t_ms, text)` gets each clause of a reply once it is over, as
    it was heard (cut ones end with `heard.CUT`), at the time it started playing.
    """

    def __init__(
        self,
        client: VoiceClient,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        *,
        echo_db: float | None = None,
        on_heard: Callable[[float, str], None] | None = None,
    ) -> None:
        self.client = client
        self.on_event = on_event
        self.on_heard = on_heard
        self.heard = HeardText()
        # a speakerphone: what the speaker plays leaks back into the mic at this gain
        self._echo_gain = None if echo_db is None else 10 ** (echo_db / 20)
        self._echo_resampler = StreamResampler(48_000, 16_000)
        self._echo_fifo = np.zeros(0, np.int16)
        self.result = Conversation()
        self._step = frame_samples(16_000)
        self._pending: collections.deque[np.ndarray] = collections.deque()
        self._flags: collections.deque[int] = collections.deque()  # _FIRST/_LAST per frame
        self._mic: list[np.ndarray] = []
        self._speaker: list[bytes] = []
        self._jitter = JitterBuffer()
        self._changed = asyncio.Event()
        self._drained = asyncio.Event()
        self._t0 = 0.0
        # what `until_quiet` watches
        self._last_activity = 0.0
        self._server_state = "listening"
        self._user_speaking = False  # the server's VAD: an onset without its offset yet
        self._awaiting: int | None = None  # a final transcript's turn with no reply over yet

    @property
    def now_ms(self) -> float:
        return round((time.perf_counter() - self._t0) * 1000, 1)

    @property
    def speaking(self) -> bool:
        """The scripted user still has speech queued."""
        return bool(self._pending)

    def say(self, pcm_16k: np.ndarray) -> None:
        """Queue an utterance; `utterances` gets its (first, last) frame send times."""
        step = self._step
        padded = np.concatenate([pcm_16k, np.zeros(-len(pcm_16k) % step, np.int16)])
        frames = list(padded.reshape(-1, step).astype(np.int16))
        if not frames:
            return
        flags = [0] * len(frames)
        flags[0] |= _FIRST
        flags[-1] |= _LAST
        self._pending.extend(frames)
        self._flags.extend(flags)

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 30.0
    ) -> dict[str, Any]:
        """The first event of the conversation so far or to come that satisfies `predicate`."""
        seen = 0
        async with asyncio.timeout(timeout_s):
            while True:
                for ev in self.result.events[seen:]:
                    if predicate(ev):
                        return ev
                seen = len(self.result.events)
                self._changed.clear()
                await self._changed.wait()

    async def run(self, script: Callable[[LiveConversation], Awaitable[None]]) -> Conversation:
        """Run the clock until `script` returns and its queued speech has been sent.

        If the orchestrator goes away first (the socket closes or breaks), the script is
        stopped and what was received so far is returned, with `lost` saying why."""
        self._t0 = time.perf_counter()
        self._record(self.client.ready)
        reader = asyncio.create_task(self._read(), name="conversation-read")
        clock = asyncio.create_task(self._tick(), name="conversation-clock")
        body = asyncio.create_task(self._body(script), name="conversation-script")
        try:
            await asyncio.wait({reader, clock, body}, return_when=asyncio.FIRST_COMPLETED)
            if body.done():
                body.result()  # the script's own errors are the caller's
            else:
                self.result.lost = _why_lost(reader, clock)
        finally:
            for task in (body, clock, reader):
                task.cancel()
            for task in (body, clock, reader):
                with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError, OSError):
                    await task
        return self._finish()

    async def _body(self, script: Callable[[LiveConversation], Awaitable[None]]) -> None:
        await script(self)
        await self.said()

    async def said(self) -> None:
        """Wait until the queued user speech has all gone out."""
        while self._pending:
            self._drained.clear()
            await self._drained.wait()

    async def sleep_ms(self, ms: float) -> None:
        await asyncio.sleep(ms / 1000)

    async def until_quiet(self, quiet_ms: float, max_ms: float) -> bool:
        """Wait until the conversation has been quiet for `quiet_ms`: the queued speech sent,
        nobody speaking (the server's VAD), no reply awaited (a final transcript without its
        `turn`) or playing, no event. False when `max_ms` passed first."""
        start = self._last_activity = self.now_ms
        while True:
            now = self.now_ms
            if self._busy():
                self._last_activity = now
            if now - self._last_activity >= quiet_ms:
                return True
            if now - start >= max_ms:
                return False
            await asyncio.sleep(FRAME_MS / 1000)

    def _busy(self) -> bool:
        return (
            bool(self._pending)
            or self._jitter.depth_ms > 0
            or self._server_state != "listening"
            or self._user_speaking
            or self._awaiting is not None
        )

    async def _tick(self) -> None:
        i = 0
        silence = np.zeros(self._step, np.int16)
        while True:
            frame = self._pending.popleft() if self._pending else silence
            flag = self._flags.popleft() if self._flags else 0
            if not self._pending:
                self._drained.set()
            played = self._jitter.pop()  # the speaker plays on the mic's clock
            self._show(self.heard.played(self._jitter.last_tag, self.now_ms))
            if self._jitter.depth_ms == 0:
                self._show(self.heard.drained())
            frame = self._with_echo(frame, played)
            self._mic.append(frame)
            await self.client.send_audio(frame.tobytes())
            self._mark(flag)
            self._speaker.append(played)
            i += 1
            await asyncio.sleep(max(self._t0 + i * FRAME_MS / 1000 - time.perf_counter(), 0))

    def _mark(self, flag: int) -> None:
        """Send times of each utterance's first frame and the end of its last frame."""
        if flag & _FIRST:
            self.result.utterances.append((self.now_ms, None))
        if flag & _LAST and self.result.utterances:
            start, _ = self.result.utterances[-1]
            self.result.utterances[-1] = (start, self.now_ms + FRAME_MS)

    def _with_echo(self, frame: np.ndarray, played: bytes) -> np.ndarray:
        if self._echo_gain is None:
            return frame
        fresh = self._echo_resampler.process(np.frombuffer(played, "<i2").astype(np.int16))
        self._echo_fifo = np.concatenate([self._echo_fifo, fresh])
        echo = np.zeros(len(frame), np.float32)
        take = min(len(frame), len(self._echo_fifo))  # the resampler's delay: a few short ticks
        echo[len(frame) - take :] = self._echo_fifo[:take]
        self._echo_fifo = self._echo_fifo[take:]
        mixed = frame.astype(np.float32) + echo * self._echo_gain
        return np.clip(mixed, -32768, 32767).astype(np.int16)

    async def _read(self) -> None:
        async for item in self.client.messages():
            self._last_activity = self.now_ms
            if item.audio is not None:
                _, turn, flags, pcm = item.audio
                self.result.frames_received += 1
                self.result.audio_log.append((self.now_ms, turn))
                self._jitter.push(pcm, self.heard.frame(turn, flags))
            elif item.event is not None:
                if item.event["type"] == "flush":
                    self._jitter.flush()
                self._record(item.event)

    def _record(self, ev: dict[str, Any]) -> None:
        over = self.heard.on_event(ev)
        ev = {**ev, "t_ms": self.now_ms}
        self._follow(ev)
        if ev["type"] == "turn":  # what the speaker played of it
            ev["heard"] = self.heard.text(ev["turn"], interrupted=bool(ev.get("interrupted")))
        self.result.events.append(ev)
        self._changed.set()
        self._show(over)  # a clause cut by a flush is shown before the flush itself
        if self.on_event is not None:
            self.on_event(ev)

    def _follow(self, ev: dict[str, Any]) -> None:
        """The server's side of `_busy`: its state, its VAD, and the replies owed."""
        kind = ev["type"]
        if kind == "state":
            self._server_state = str(ev.get("state", self._server_state))
        elif kind == "vad":
            self._user_speaking = ev.get("event") == "onset"
        elif kind == "transcript" and ev.get("final"):
            self._awaiting = int(ev.get("turn", 0))
        elif self._awaiting is not None and _answers(ev, self._awaiting):
            self._awaiting = None

    def _show(self, clauses: list[Clause]) -> None:
        if self.on_heard is None:
            return
        for clause in clauses:
            if clause.played or clause.cut:  # a clause flushed before it played: not heard
                t_ms = clause.first_played_ms if clause.first_played_ms is not None else self.now_ms
                self.on_heard(t_ms, clause.shown())

    def _finish(self) -> Conversation:
        from duplexd.audio.resample import resample_once

        n = min(len(self._mic), len(self._speaker))
        mic = np.concatenate(self._mic[:n]) if n else np.zeros(0, np.int16)
        self.result.mic = resample_once(mic, 16_000, 48_000)[: n * 960]
        self.result.speaker = np.frombuffer(b"".join(self._speaker[:n]), "<i2").astype(np.int16)
        self.result.underruns = self._jitter.stats.underruns
        return self.result


async def run_file_conversation(
    url: str,
    mic_16k: np.ndarray,
    *,
    hello: dict[str, Any] | None = None,
    tail_ms: int = 4000,
    max_wait_ms: int | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> Conversation:
    """Play `mic_16k` (int16, 16 kHz) as the microphone in real time, then listen `tail_ms`
    more; with `max_wait_ms`, until the conversation has been quiet for `tail_ms` (every reply
    played out), at most `max_wait_ms` after the file ended (`Conversation.capped` then)."""

    async def script(conv: LiveConversation) -> None:
        conv.say(mic_16k)
        await conv.said()
        if max_wait_ms is None:
            await conv.sleep_ms(tail_ms)
        elif not await conv.until_quiet(tail_ms, max_wait_ms):
            conv.result.capped = True

    async with VoiceClient(url, hello or {}) as client:
        return await LiveConversation(client, on_event).run(script)


def _answers(ev: dict[str, Any], turn: int) -> bool:
    """`ev` settles the user turn `turn`: its reply ended; or the words went into a resumed
    reply (a false interruption), or no reply will come (an error)."""
    kind = ev["type"]
    return (kind == "turn" and ev["turn"] >= turn) or kind in ("resume", "error")


def _why_lost(reader: asyncio.Task[None], clock: asyncio.Task[None]) -> str:
    """Why the connection ended before the script did (the reader or the clock stopped)."""
    for task in (reader, clock):
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            return f"the connection broke: {type(exc).__name__}: {exc}".rstrip(": ")
    return "the orchestrator closed the connection"


def write_events(path: Path, events: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
