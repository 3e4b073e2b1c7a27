"""Worker sessions and the per-utterance streaming pipeline.

    TextChunk stream ─▶ reader ─▶ TextChunker ─▶ units ─▶ producer (engine on a thread)
        ─▶ bounded frame buffer (stall) ─▶ emitter: real time + lead, PAUSE/RESUME/STOP ─▶ gRPC

The emitter is where barge-in is decided: it checks the pause flag immediately before handing
each frame to gRPC, and pacing keeps at most `lead_ms` of audio ahead of the listener, so a
PAUSE leaves little in flight. The engine keeps producing into the bounded buffer while paused
(it stays hot) and simply stalls when the buffer is full. An unpaced session (StartSession
`unpaced`: a client writing a file) skips the pacing: frames go out as the engine makes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Literal

from duplexd.audio.frames import FRAME_MS, AudioFrame
from duplexd.config import WorkerSection
from duplexd.errors import FailedPrecondition, InvalidArgument
from duplexd.tts.adapters.base import FrameBatch, TTSAdapter
from duplexd.tts.chunker import TextChunker
from duplexd.tts.manager import Lease

__all__ = ["SessionState", "SynthStats", "TextIn", "Utterance", "WorkerSession", "new_session_id"]

SessionState = Literal["idle", "speaking", "paused", "stopped"]
_FRAME_S = FRAME_MS / 1000
_MAX_UNITS = 8
# How long a new Synthesize waits for the session's previous utterance to end. A client that
# cancels a call (or STOPs it) and at once starts the next one is right: its cancel and its new
# call race through gRPC, and a STOPped utterance ends at its next frame. Only an utterance still
# running after this is a real "already speaking".
_TAKEOVER_GRACE_S = 1.0


def new_session_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True, slots=True)
class TextIn:
    """One TextChunk as the pipeline sees it (decoupled from protobuf)."""

    session_id: str
    text: str
    is_final: bool


@dataclass(slots=True)
class SynthStats:
    """What one utterance measured; the server turns it into metrics."""

    first_text_at: float | None = None
    first_frame_at: float | None = None
    frames_sent: int = 0
    late_frames: int = 0
    dropped_frames: int = 0
    units: int = 0
    gaps_ms: list[float] = field(default_factory=list)

    @property
    def first_audio_ms(self) -> float | None:
        if self.first_text_at is None or self.first_frame_at is None:
            return None
        return (self.first_frame_at - self.first_text_at) * 1000


@dataclass(slots=True)
class _Item:
    pcm: bytes
    unit: int
    unit_text: str
    last: bool = False


_END = object()


class WorkerSession:
    """A leased model plus the state PAUSE/RESUME/STOP act on."""

    def __init__(
        self,
        session_id: str,
        lease: Lease,
        voice: str | None,
        language: str | None,
        *,
        unpaced: bool = False,
    ) -> None:
        self.id = session_id
        self.lease = lease
        self.voice = voice
        self.language = language
        self.unpaced = unpaced  # no real-time pacing: the client writes a file
        self.created = time.monotonic()
        self.last_activity = self.created
        self.next_seq = 0
        self.last_seq_sent: int | None = None
        self.utterance: Utterance | None = None
        self.closed = False

    @property
    def model_id(self) -> str:
        return self.lease.model_id

    @property
    def state(self) -> SessionState:
        if self.closed:
            return "stopped"
        if self.utterance is None or self.utterance.done:
            return "idle"
        return "paused" if self.utterance.paused else "speaking"

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    async def begin(
        self, cfg: WorkerSection, executor: Executor, grace_s: float = _TAKEOVER_GRACE_S
    ) -> Utterance:
        """A new utterance, once the previous one has finished tearing down: a STOPped or
        cancelled one ends within `grace_s`; one still speaking after that is refused."""
        if self.closed:
            raise FailedPrecondition(f"session {self.id} has ended")
        previous = self.utterance
        if previous is not None and not previous.finished:
            await previous.wait_finished(grace_s)
            if self.closed:
                raise FailedPrecondition(f"session {self.id} has ended")
            if self.utterance is not previous:  # another call took over while we waited
                raise FailedPrecondition(
                    f"session {self.id} is already speaking", hint="one Synthesize at a time"
                )
            if not previous.finished:
                if not previous.stopping:
                    raise FailedPrecondition(
                        f"session {self.id} is already speaking",
                        hint="STOP it or wait for it to finish",
                    )
                # STOPped, but its call is stuck writing to a client that no longer reads:
                # it will send nothing more, so it no longer holds the session
                await previous.close()
        adapter = self.lease.handle
        assert isinstance(adapter, TTSAdapter)
        self.utterance = Utterance(self, adapter, cfg, executor)
        return self.utterance

    def close(self) -> None:
        self.closed = True
        if self.utterance is not None:
            self.utterance.stop()
        self.lease.release()


class Utterance:
    """One Synthesize call: owns its reader/producer tasks and the emitter generator."""

    def __init__(
        self, session: WorkerSession, adapter: TTSAdapter, cfg: WorkerSection, executor: Executor
    ) -> None:
        self.session = session
        self.adapter = adapter
        self.cfg = cfg
        self.executor = executor
        self.stats = SynthStats()
        self.done = False  # no more frames: the emitter ended (teardown may still run)
        self.finished = False  # done and torn down: its tasks have ended
        self.paused = False
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._stopped = asyncio.Event()
        # Bounded: a worker that is far ahead stops reading text, and gRPC flow control
        # carries that back to the orchestrator's LLM feed (backpressure).
        self._units: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue(maxsize=_MAX_UNITS)
        self._frames: asyncio.Queue[_Item | object] = asyncio.Queue(maxsize=cfg.queue_frames)
        self._skip_through_unit = -1  # RESUME at a unit boundary drops the rest of this unit
        self._current_unit = -1
        self._error: BaseException | None = None
        self._final_unit = 1 << 62  # known once the reader has seen the end of the text
        self._tasks: list[asyncio.Task[None]] = []
        self._finished = asyncio.Event()
        self._play_end = 0.0  # when the audio sent so far finishes playing at the client

    # -- control (called from Control RPCs, same event loop) ------------------------------

    def pause(self) -> None:
        self.paused = True
        self._resumed.clear()

    def resume(self) -> None:
        if not self.paused:
            return
        if self.cfg.resume_mode == "next_unit":
            self._skip_through_unit = self._current_unit
        self.paused = False
        self._play_end = 0.0  # the listener's buffer drained while paused
        self._resumed.set()

    def stop(self) -> None:
        self._stopped.set()
        self._resumed.set()

    @property
    def stopping(self) -> bool:
        """STOP (or the session's end) was asked: no frame goes out after it."""
        return self._stopped.is_set()

    async def wait_finished(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._finished.wait(), timeout_s)

    async def close(self) -> None:
        """End it now (idempotent): no more frames, reader and producer cancelled. `run` does
        this when it ends; its caller too, so a call cancelled while its generator was not
        running (gRPC was writing a frame) does not wait for the generator to be collected."""
        self.stop()
        self.done = True
        if self.finished:
            return
        try:
            await self._cancel_tasks()
        finally:
            self._drop_queued()
            self.finished = True
            self._finished.set()

    def _drop_queued(self) -> None:
        """Let go of audio and text nobody will send: the session keeps its last utterance
        until the next one, and a cut-off one could hold `queue_frames` frames (~1 MB)."""
        for queue in (self._frames, self._units):
            while not queue.empty():
                queue.get_nowait()

    @property
    def queue_depth(self) -> int:
        return self._frames.qsize()

    # -- the pipeline ----------------------------------------------------------------------

    async def run(
        self, first: TextIn, rest: AsyncIterator[TextIn]
    ) -> AsyncGenerator[AudioFrame, None]:
        """Yield wire frames paced to real time; `unit_text` marks each unit's first frame."""
        self._tasks = [
            asyncio.create_task(self._read(first, rest), name=f"tts-read-{self.session.id}"),
            asyncio.create_task(self._produce(), name=f"tts-produce-{self.session.id}"),
        ]
        try:
            async for item in self._emit():
                frame = AudioFrame(
                    item.pcm,
                    self.session.next_seq,
                    unit=item.unit,
                    unit_text=item.unit_text,
                    is_last=item.last,
                )
                self.session.next_seq += 1
                self.session.last_seq_sent = frame.seq
                yield frame
        finally:
            await self.close()

    async def _read(self, first: TextIn, rest: AsyncIterator[TextIn]) -> None:
        chunker = TextChunker()
        total, unit_index = 0, 0
        try:
            chunk: TextIn | None = first
            while chunk is not None:
                if chunk.session_id and chunk.session_id != self.session.id:
                    raise InvalidArgument("all TextChunks of a Synthesize call need one session_id")
                total += len(chunk.text)
                if total > self.cfg.max_text_chars:
                    raise InvalidArgument(
                        f"text too long: {total} characters > max_text_chars "
                        f"{self.cfg.max_text_chars}",
                        hint="split it into several utterances",
                    )
                if self.stats.first_text_at is None and chunk.text.strip():
                    self.stats.first_text_at = time.perf_counter()
                units = chunker.push(chunk.text) + (chunker.flush() if chunk.is_final else [])
                for unit in units:
                    await self._units.put((unit_index, unit))
                    unit_index += 1
                if chunk.is_final:
                    break
                chunk = await anext(rest, None)
            else:
                for unit in chunker.flush():  # client half-closed without is_final
                    await self._units.put((unit_index, unit))
                    unit_index += 1
            self._final_unit = unit_index - 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._error = exc
        await self._units.put(None)

    async def _produce(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while (entry := await self._units.get()) is not None:
                index, text = entry
                self.stats.units += 1
                batches = self.adapter.frame_batches(
                    text, self.session.voice, self.session.language
                )
                first = True
                while (
                    batch := await loop.run_in_executor(self.executor, _next, batches)
                ) is not None:
                    for pcm in batch:
                        await self._frames.put(_Item(pcm, index, text if first else ""))
                        first = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._error = exc
        # Not in `finally`: a cancelled producer has nobody to tell, and a full queue
        # would block its cancellation forever.
        await self._frames.put(_END)

    async def _emit(self) -> AsyncIterator[_Item]:
        """Frames in order, paced. Only the final unit is read one frame ahead, to mark
        `is_last` without delaying the gaps between earlier units."""
        pending: _Item | None = None
        while (item := await self._next_item()) is not None:
            if pending is not None and (sent := await self._pace(pending)) is not None:
                yield sent
            pending = None
            if item.unit < self._final_unit:
                if (sent := await self._pace(item)) is not None:
                    yield sent
            else:
                pending = item
        if self._error is not None:
            raise self._error
        if pending is not None:
            pending.last = True
            if (sent := await self._pace(pending)) is not None:
                yield sent

    async def _next_item(self) -> _Item | None:
        if self._stopped.is_set():
            return None
        get = asyncio.ensure_future(self._frames.get())
        stop = asyncio.ensure_future(self._stopped.wait())
        try:
            done, _ = await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (get, stop):
                if not fut.done():
                    fut.cancel()
        if get not in done:
            return None
        item = get.result()
        return item if isinstance(item, _Item) else None

    async def _pace(self, item: _Item) -> _Item | None:
        """Hold the frame until it is within `lead_ms` of play time (an unpaced session: not
        at all), and never while paused.

        Returns None when the frame must not go out after all: STOP came, a RESUME moved
        playback past this frame's unit while it waited, or (backpressure `drop_oldest`) a
        slow client left us more than `lead_ms` behind real time.
        """
        lead = self.cfg.lead_ms / 1000
        while True:
            await self._resumed.wait()
            if self._stopped.is_set() or item.unit <= self._skip_through_unit:
                return None
            if self.session.unpaced:  # a file, not a listener: as fast as the engine goes
                return self._sent(item, time.perf_counter())
            ahead = self._play_end - time.perf_counter()
            if ahead <= lead:
                break
            await asyncio.sleep(ahead - lead)
        now = time.perf_counter()
        behind = now - self._play_end if self._play_end else 0.0
        if behind > lead and self.cfg.backpressure == "drop_oldest":
            # a slow client held us up: skip audio to get back to real time instead of
            # delivering everything late (the frame's play slot passes unsent)
            self.stats.dropped_frames += 1
            self._play_end += _FRAME_S
            return None
        if behind > 0:
            self.stats.late_frames += 1
            self.stats.gaps_ms.append(behind * 1000)
        self._play_end = max(self._play_end, now) + _FRAME_S
        return self._sent(item, now)

    def _sent(self, item: _Item, now: float) -> _Item:
        self._current_unit = item.unit
        if self.stats.first_frame_at is None:
            self.stats.first_frame_at = now
        self.stats.frames_sent += 1
        return item

    async def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _next(batches: Iterator[FrameBatch]) -> FrameBatch | None:
    """Advance an engine generator on the executor thread (None when exhausted)."""
    return next(batches, None)
