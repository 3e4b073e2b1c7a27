"""One spoken reply: responder text -> worker Synthesize -> client, with barge-in controls.

The request stream pulls text from the responder only while the feed is open and only as fast
as gRPC flow control lets it (the worker stops reading when it is far enough ahead), so a
barge-in stops the LLM where it stands. Frames that arrive after a barge-in are dropped here,
not sent: the client goes quiet the moment the flush goes out, whatever is still in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from duplexd.audio.pcm import rms
from duplexd.errors import DuplexError
from duplexd.orchestrator.deps import Clock, TtsApi
from duplexd.orchestrator.llm import Message, Responder
from duplexd.rpc import tts_pb2 as pb

__all__ = ["STOP_DEADLINE_S", "Reply", "ReplyTimes", "TtsBinding"]

STOP_DEADLINE_S = 0.5
"""A STOP the worker has not answered by then is given up on: the stream is cancelled anyway
(a cancelled Synthesize stops the worker's utterance too), so a hard stop never waits out the
client's 5 s deadline on a stuck worker."""


@dataclass
class TtsBinding:
    """The session's lease on a worker: its TTS session and model."""

    worker: str
    client: TtsApi
    session_id: str
    model_id: str
    fallback: bool = False


@dataclass
class ReplyTimes:
    started: float = 0.0
    first_text: float | None = None
    first_audio: float | None = None
    ready: float | None = None  # a held (speculative) reply's first frame arrived
    ended: float | None = None


@dataclass
class Reply:
    turn: int
    tts: TtsBinding
    responder: Responder
    history: list[Message]
    on_audio: Callable[[bytes, bool, float], None]  # (pcm, is_last, level) -> client
    on_unit: Callable[[str], None]  # a unit starts playing: its text
    on_first_audio: Callable[[], None]
    clock: Clock = time.perf_counter
    holding: bool = False  # speculative: frames are kept back until `release()`
    times: ReplyTimes = field(default_factory=ReplyTimes)
    heard: list[str] = field(default_factory=list)
    muted: bool = False
    frames_after_mute: int = 0
    last_frame_after_mute: float | None = None
    error: DuplexError | None = None
    _held: list[pb.AudioFrame] = field(default_factory=list)
    _feed_open: asyncio.Event = field(default_factory=asyncio.Event)
    _call: object = None
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.times.started = self.clock()
        self._feed_open.set()
        self._task = asyncio.create_task(self._run(), name=f"reply-{self.turn}")

    @property
    def done(self) -> bool:
        return self._task is None or self._task.done()

    @property
    def audible(self) -> bool:
        return self.times.first_audio is not None and not self.muted and not self.done

    async def wait(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    def release(self) -> None:
        """A speculative reply's turn is confirmed: send what was held, then stream live."""
        self.holding = False
        held, self._held = self._held, []
        for frame in held:
            self._on_frame(frame)

    # -- barge-in --------------------------------------------------------------------------

    def mute(self) -> asyncio.Task[pb.ControlResp]:
        """Stop sending audio and text at once; PAUSE the worker (returns the RPC task)."""
        self.muted = True
        self._feed_open.clear()
        return asyncio.create_task(self.tts.client.control(self.tts.session_id, pb.PAUSE))

    async def resume(self) -> None:
        self.muted = False
        self._feed_open.set()
        await self.tts.client.control(self.tts.session_id, pb.RESUME)

    async def stop(self) -> None:
        """End the reply: STOP the worker's utterance and cancel the responder.

        Hard: the STOP waits at most `STOP_DEADLINE_S`, then the stream is cancelled anyway."""
        self.muted = True
        self._feed_open.clear()
        with contextlib.suppress(DuplexError):
            await self.tts.client.control(self.tts.session_id, pb.STOP, deadline_s=STOP_DEADLINE_S)
        await self.cancel()

    async def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- the pipeline ----------------------------------------------------------------------

    async def _run(self) -> None:
        call = self.tts.client.open_stream(self._requests())
        self._call = call
        try:
            async for frame in call:
                self._on_frame(frame)
        except asyncio.CancelledError:
            call.cancel()
            raise
        except DuplexError as exc:  # the worker's status, for the session to report
            self.error = exc
        except Exception as exc:
            self.error = DuplexError(str(exc))
        finally:
            self.times.ended = self.clock()

    async def _requests(self) -> AsyncIterator[pb.TextChunk]:
        sid = self.tts.session_id
        try:
            async for piece in self.responder.respond(self.history):
                if self.times.first_text is None:
                    self.times.first_text = self.clock()
                await self._feed_open.wait()  # barge-in: the LLM is not read any further
                yield pb.TextChunk(session_id=sid, text=piece)
        except DuplexError as exc:
            self.error = exc
        yield pb.TextChunk(session_id=sid, is_final=True)

    def _on_frame(self, frame: pb.AudioFrame) -> None:
        if self.holding:
            if self.times.ready is None:
                self.times.ready = self.clock()
            self._held.append(frame)
            return
        now = self.clock()
        if self.muted:
            self.frames_after_mute += 1
            self.last_frame_after_mute = now
            return
        if self.times.first_audio is None:
            self.times.first_audio = now
            self.on_first_audio()
        if frame.unit_text:
            self.heard.append(frame.unit_text)
            self.on_unit(frame.unit_text)
        self.on_audio(frame.pcm, frame.is_last, rms(frame.pcm))
