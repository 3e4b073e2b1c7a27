"""The WebRTC transport (aiortc): one peer connection feeding one ordinary `Session`.

WHIP signalling (the HTTP side: `POST /whip`, SDP checks, ICE servers) is in `whip.py`; this
module is the call itself: the same events and latency figures as the WebSocket, through the
same `Outbox`, and client messages through the same `Dispatcher`.

- Mic: Opus from the browser, decoded by aiortc to 48 kHz; re-cut here (PyAV's resampler,
  downmix to mono) into exact 20 ms frames for `session.on_audio` (hello sample_rate 48000).
  aiortc's receive jitter buffer is cut from 4 packets to 1 (`_low_latency_mic`): 60 ms less
  before the VAD hears an end of turn or a barge-in.
- Reply: `ReplyTrack`, an audio track aiortc pulls every 20 ms (it paces itself on the clock, as
  aiortc expects). It holds at most ONE frame: the Outbox writer blocks until the track has
  taken the previous frame, so the reply audio waits in the Outbox, where barge-in's
  `flush_audio()` drops it; `RtcOutbox.flush_audio` also empties the track's one-frame slot
  and drops the frame a blocked writer was about to hand over. After a flush the very next
  packet is silence. Events queue behind audio in the same Outbox, so `reply` text arrives as
  its clause starts playing.
- Events: a data channel the client opens (any label) carries the WebSocket protocol's JSON
  events, both ways (`text`, `llm`, `ping`, `end` from the client). Events produced before the
  channel opens are held (bounded) and sent when it does. A WHIP client without a data channel
  (OBS, a gstreamer `whipsink`) just talks and listens.
- Cleanup: the peer connection going `failed`/`closed`, no mic audio for `MEDIA_TIMEOUT_S`, no
  connection within `CONNECT_TIMEOUT_S`, a DELETE, an `end` message, or no conversation (no
  speech, text or reply) for `sessions.idle_timeout_s` close the call: session, Outbox, tasks
  and peer connection, and nothing else.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fractions
import json
import time
from collections.abc import Callable
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError

from duplexd.audio.frames import FRAME_BYTES, FRAME_SAMPLES, SAMPLE_RATE
from duplexd.errors import DuplexError, InvalidArgument
from duplexd.logging import get_logger, session_context
from duplexd.orchestrator.dispatch import Dispatcher
from duplexd.orchestrator.protocol import HEADER, Hello
from duplexd.orchestrator.session import Session
from duplexd.orchestrator.transport import Outbox, dumps

__all__ = [
    "CONNECT_TIMEOUT_S",
    "MEDIA_TIMEOUT_S",
    "ReplyTrack",
    "RtcCall",
    "RtcOutbox",
    "RtcTransport",
]

log = get_logger("duplexd.orchestrator.webrtc")

CONNECT_TIMEOUT_S = 30.0  # offer answered but ICE/DTLS never connected
MEDIA_TIMEOUT_S = 10.0  # a connected peer whose mic sends nothing for this long is gone (Opus
# DTX still sends a packet every 400 ms; a killed browser says nothing, ICE consent needs 30 s)
_WATCHDOG_S = 1.0
_MAX_PENDING_EVENTS = 1000  # events held until the data channel opens
_SLOT_WAIT_S = 0.2  # a track not pulling frames (not yet sending) makes the writer drop them
_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
_ACTIVE_EVENTS = frozenset({"vad", "transcript", "reply", "state"})
_MIC_PREFETCH = 1  # frames aiortc's receive jitter buffer holds before decoding (its default: 4)


# -- the outgoing track ----------------------------------------------------------------------


class ReplyTrack(MediaStreamTrack):
    """Reply audio for aiortc: one 20 ms frame per `recv()`, silence when none is waiting.

    `put()` fills a one-frame slot and waits while it is full, so nothing queues here: the
    Outbox keeps the backlog (and flushes it on barge-in). `flush()` empties the slot and
    makes a `put()` in progress drop its frame.
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._slot: bytes | None = None
        self._taken = asyncio.Event()
        self._generation = 0
        self._holding = False  # a `put` holds a frame until the slot empties
        self._start: float | None = None
        self._pts = 0
        self.frames_played = 0
        self.frames_dropped = 0

    async def put(self, pcm: bytes) -> None:
        if self._start is None:  # not sending yet (connecting, or a receive-only peer)
            self.frames_dropped += 1
            return
        generation = self._generation
        self._holding = True
        try:
            while self._slot is not None and self._generation == generation:
                self._taken.clear()
                try:
                    await asyncio.wait_for(self._taken.wait(), _SLOT_WAIT_S)
                except TimeoutError:  # the sender stalled: don't hold up the events behind us
                    self.frames_dropped += 1
                    return
        finally:
            self._holding = False
        if self._generation == generation and self.readyState == "live":
            self._slot = pcm

    def flush(self) -> int:
        """Drop the waiting frame (and the one a blocked `put` holds); returns how many."""
        dropped = int(self._slot is not None) + int(self._holding)
        self._slot, self._holding = None, False
        self._generation += 1
        self._taken.set()
        return dropped

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            self._pts += FRAME_SAMPLES
            wait = self._start + self._pts / SAMPLE_RATE - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
        pcm, self._slot = self._slot, None
        self._taken.set()
        if pcm is not None:
            self.frames_played += 1
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(pcm if pcm is not None else bytes(FRAME_BYTES))
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        frame.time_base = _TIME_BASE
        return frame

    def stop(self) -> None:
        self.flush()
        super().stop()


# -- the transport seam ------------------------------------------------------------------------


class RtcTransport:
    """`Transport` for one peer: events on the data channel, audio into the `ReplyTrack`."""

    def __init__(self, track: ReplyTrack) -> None:
        self.track = track
        self.channel: RTCDataChannel | None = None
        self._pending: collections.deque[str] = collections.deque(maxlen=_MAX_PENDING_EVENTS)
        self.last_activity = time.monotonic()
        self.closed = False

    def attach(self, channel: RTCDataChannel) -> None:
        self.channel = channel
        if channel.readyState == "open":
            self._drain()
        else:
            channel.on("open", self._drain)

    def _drain(self) -> None:
        while self._pending and self._send_now(self._pending[0]):
            self._pending.popleft()

    def _send_now(self, text: str) -> bool:
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return False
        try:
            channel.send(text)
        except Exception:  # closing under us: the call is going away
            return False
        return True

    async def send_event(self, event: dict[str, Any]) -> None:
        if event.get("type") in _ACTIVE_EVENTS:
            self.last_activity = time.monotonic()
        text = dumps(event)
        if self._pending or not self._send_now(text):
            self._pending.append(text)
            self._drain()

    async def send_audio(self, message: bytes) -> None:
        if not self.closed:
            await self.track.put(message[HEADER.size :])


class RtcOutbox(Outbox):
    """The Outbox whose barge-in flush also reaches into the track's one-frame slot."""

    def __init__(self, transport: RtcTransport, *, max_audio: int = 100) -> None:
        super().__init__(transport, max_audio=max_audio)
        self.rtc = transport

    def flush_audio(self) -> int:
        return super().flush_audio() + self.rtc.track.flush()


# -- helpers ----------------------------------------------------------------------------------


def _is_ping(message: str) -> bool:
    """A keep-alive? (Malformed or absurdly nested input is not; the dispatcher answers it.)"""
    try:
        return bool(json.loads(message).get("type") == "ping")
    except (ValueError, AttributeError, RecursionError):
        return False


def _low_latency_mic(receiver: Any) -> None:
    """aiortc decodes an audio packet only once 4 more have arrived (80 ms): on every end of
    turn and every barge-in the VAD would hear the user 60 ms later than with 1. One is enough
    on a LAN; a late packet is dropped, not waited for (the VAD and ASR don't mind a lost
    20 ms). aiortc has no setting for it: the buffer is a private attribute of the receiver,
    replaced here only if it is there (a later aiortc just keeps its default)."""
    attr = "_RTCRtpReceiver__jitter_buffer"
    if isinstance(getattr(receiver, attr, None), JitterBuffer):
        setattr(receiver, attr, JitterBuffer(capacity=16, prefetch=_MIC_PREFETCH))


def _opus_only() -> list[Any]:
    caps = RTCRtpSender.getCapabilities("audio").codecs
    return [c for c in caps if c.mimeType.lower() == "audio/opus"]


# -- one call ------------------------------------------------------------------------------------


class RtcCall:
    """One peer connection and its session, with everything that must end with them."""

    def __init__(
        self,
        dispatch: Dispatcher,
        session: Session,
        outbox: RtcOutbox,
        transport: RtcTransport,
        pc: RTCPeerConnection,
        *,
        expects_audio: bool,
        on_close: Callable[[RtcCall], None],
    ) -> None:
        self.dispatch, self.session, self.outbox = dispatch, session, outbox
        self.transport, self.pc = transport, pc
        self._on_close = on_close
        self.id = session.id
        self.expects_audio = expects_audio
        self.created = time.monotonic()
        self.connected_at: float | None = None
        self.last_audio: float | None = None
        self.frames_in = 0
        self.closed = False
        self.close_reason = ""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        dispatch: Dispatcher,
        hello: Hello,
        offer_sdp: str,
        *,
        ice_servers: list[RTCIceServer],
        expects_audio: bool,
        on_close: Callable[[RtcCall], None],
    ) -> RtcCall:
        """Start a session and answer `offer_sdp` (the answer: `call.pc.localDescription`).

        Raises DuplexError (InvalidArgument for an offer aiortc cannot answer) with nothing
        left running. `on_close` hears of the call's end, whatever ends it.
        """
        track = ReplyTrack()
        transport = RtcTransport(track)
        outbox = RtcOutbox(transport)
        outbox.start()
        session = Session(dispatch.deps, hello, outbox)
        try:
            await session.start()
        except BaseException:
            await session.aclose()
            await outbox.aclose(drain_s=0)
            track.stop()
            raise
        # a list even when empty: None would make aiortc ask Google's public STUN server
        pc = RTCPeerConnection(RTCConfiguration(iceServers=list(ice_servers)))
        call = cls(dispatch, session, outbox, transport, pc, expects_audio=expects_audio,
                   on_close=on_close)  # fmt: skip
        pc.on("track", call.on_track)
        try:
            transceiver = pc.addTransceiver(track, direction="sendrecv")
            transceiver.setCodecPreferences(_opus_only())
            _low_latency_mic(transceiver.receiver)
            await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except BaseException as exc:
            await call.aclose("negotiation failed")
            if isinstance(exc, Exception) and not isinstance(exc, DuplexError):
                raise InvalidArgument(f"cannot answer this offer: {exc}") from None
            raise
        return call

    def start(self) -> None:
        pc = self.pc
        pc.on("connectionstatechange", self._on_state)
        pc.on("datachannel", self._on_channel)
        self._spawn(self._watchdog(), "rtc-watchdog")

    def on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and not self.closed:
            self._spawn(self._pump(track), "rtc-mic")

    # -- events from aiortc --------------------------------------------------------------

    def _on_state(self) -> None:
        state = self.pc.connectionState
        log.info("webrtc connection", session_id=self.id, state=state)
        if state == "connected" and self.connected_at is None:
            self.connected_at = time.monotonic()
        elif state in ("failed", "closed"):
            self.close_soon(f"peer connection {state}")

    def _on_channel(self, channel: RTCDataChannel) -> None:
        if self.transport.channel is not None:  # one event channel per call
            return
        self.transport.attach(channel)
        channel.on("message", self._on_message)

    def _on_message(self, message: str | bytes) -> None:
        if self.closed:
            return
        if isinstance(message, bytes):
            self.dispatch.error(self.outbox, InvalidArgument(
                "binary data channel messages are not used: audio travels on the media track"
            ))  # fmt: skip
            return
        if not _is_ping(message):  # a keep-alive is not a conversation
            self.transport.last_activity = time.monotonic()
        with session_context(self.id):
            keep = self.dispatch.on_json(message, self.session, self.outbox)
        if not keep:
            self.close_soon("the client sent end")

    async def _pump(self, track: MediaStreamTrack) -> None:
        """Mic frames from aiortc (48 kHz, stereo s16) -> exact 20 ms mono frames."""
        resampler = av.AudioResampler(
            format="s16", layout="mono", rate=SAMPLE_RATE, frame_size=FRAME_SAMPLES
        )
        session = self.session
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.last_audio = time.monotonic()
            if not isinstance(frame, av.AudioFrame):
                continue
            for out in resampler.resample(frame):
                pcm = bytes(out.planes[0])[:FRAME_BYTES]
                if len(pcm) == FRAME_BYTES:
                    self.frames_in += 1
                    session.on_audio(pcm)

    async def _watchdog(self) -> None:
        idle_s = self.dispatch.deps.config.sessions.idle_timeout_s
        while not self.closed:
            await asyncio.sleep(min(_WATCHDOG_S, idle_s / 4))
            now = time.monotonic()
            if self.connected_at is None:
                if now - self.created > CONNECT_TIMEOUT_S:
                    self.close_soon(f"no connection within {CONNECT_TIMEOUT_S:.0f} s")
                continue
            heard = self.last_audio or self.connected_at
            if self.expects_audio and now - heard > MEDIA_TIMEOUT_S:
                self.close_soon(f"no audio from the peer for {MEDIA_TIMEOUT_S:.0f} s")
            elif now - self.transport.last_activity > idle_s and self._quiet():
                self.dispatch.error(self.outbox, DuplexError(
                    f"idle for {idle_s:.0f} s: no speech, text or reply"
                ), fatal=True, code="idle_timeout")  # fmt: skip
                self.close_soon("idle timeout")

    def _quiet(self) -> bool:
        reply = self.session.reply
        return reply is None or reply.done

    # -- ending --------------------------------------------------------------------------

    def close_soon(self, reason: str) -> None:
        if self._closing is None:
            self._closing = asyncio.create_task(self.aclose(reason), name=f"rtc-close-{self.id}")

    async def aclose(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed, self.close_reason = True, reason
        played = self.transport.track.frames_played
        log.info("webrtc call ending", session_id=self.id, reason=reason,
                 frames_in=self.frames_in, frames_out=played)  # fmt: skip
        self._on_close(self)
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        for task in list(self._tasks):
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(Exception):
            await self.session.aclose()
        await self.outbox.aclose(drain_s=0.5)  # a last error event, if the channel is open
        self.transport.closed = True
        self.transport.track.stop()
        with contextlib.suppress(Exception):
            await self.pc.close()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=f"{name}-{self.id}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("webrtc task failed", session_id=self.id, task=task.get_name(),
                      error=repr(exc))  # fmt: skip
            self.close_soon(f"internal error: {exc}")

    def summary(self) -> dict[str, Any]:
        return {
            "session_id": self.id,
            "connection": self.pc.connectionState,
            "frames_in": self.frames_in,
            "frames_out": self.transport.track.frames_played,
            "data_channel": self.transport.channel is not None,
        }
