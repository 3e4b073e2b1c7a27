"""TEST DOUBLES for a `Session`'s dependencies — not engines, not a worker.

They fill the seams of `duplexd.orchestrator.deps` so a whole conversation (turns, barge-in,
speculation, worker loss) runs in-process in milliseconds: tests/unit/test_session.py. The real
engines and a real worker over gRPC are covered by the integration tests; these only make the
session's own logic observable.

- `FakeVAD`: speech is a script of (start_ms, end_ms) segments in stream time; it reports an
  onset `onset_delay_ms` after a segment starts and an offset `hangover_ms` after it ends, like
  the real detector's `min_speech_ms` / `hangover_ms`.
- `FakeTranscriber`: hands out scripted texts, one per committed utterance; records `feed`,
  `begin_final`, `cancel`, `reset` and `commit` calls; can publish a partial.
- `FakeTTS`: a worker client that streams 20 ms frames for the text it is sent, honours
  PAUSE / RESUME / STOP at once and records them, and can be told to die (`die()`) or to
  restart (`restart()`: its sessions are gone, and calls for them answer NOT_FOUND as the real
  worker's do); like the worker it refuses an utterance longer than `max_text_chars`.
- `FakeEndOfTurn`: answers "complete" or "not done" from a script, recording the audio
  length it was shown each time.
- `RecordingTransport`: keeps every event and audio message a session sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from duplexd.asr import Transcript
from duplexd.audio.frames import FRAME_MS
from duplexd.audio.pcm import Int16Array
from duplexd.errors import DaemonUnavailable, DuplexError, InvalidArgument, ModelNotFound
from duplexd.orchestrator.endofturn import Decision
from duplexd.rpc import tts_pb2 as pb
from duplexd.vad import VADEvent

__all__ = ["FakeEndOfTurn", "FakeTTS", "FakeTranscriber", "FakeVAD", "RecordingTransport"]

_VAD_RATE = 16_000
_OUT_SAMPLES = 48_000 * FRAME_MS // 1000


class FakeVAD:
    """Speech where the script says, whatever the audio (see module doc)."""

    def __init__(
        self,
        segments: Iterable[tuple[int, int]] = (),
        *,
        onset_delay_ms: int = 40,
        hangover_ms: int = 60,
    ) -> None:
        self.segments: list[tuple[int, int]] = sorted(segments)
        self.onset_delay_ms, self.hangover_ms = onset_delay_ms, hangover_ms
        self.stream_ms = 0
        self._reported: set[tuple[int, str]] = set()

    def speak(self, start_ms: int, end_ms: int) -> None:
        """Add a segment of speech (stream ms)."""
        self.segments = sorted([*self.segments, (start_ms, end_ms)])

    def _segment_at(self, t_ms: int) -> tuple[int, int] | None:
        return next((s for s in self.segments if s[0] <= t_ms < s[1]), None)

    @property
    def last_probability(self) -> float:
        return 1.0 if self._segment_at(self.stream_ms - 1) is not None else 0.0

    @property
    def speaking(self) -> bool:
        t = self.stream_ms
        return any(s + self.onset_delay_ms <= t < e + self.hangover_ms
                   and (s, "off") not in self._reported for s, e in self.segments)  # fmt: skip

    def process(self, pcm16: Int16Array) -> list[VADEvent]:
        before = self.stream_ms
        self.stream_ms += len(pcm16) * 1000 // _VAD_RATE
        events = []
        for start, end in self.segments:
            onset_at, offset_at = start + self.onset_delay_ms, end + self.hangover_ms
            if before < onset_at <= self.stream_ms and (start, "on") not in self._reported:
                self._reported.add((start, "on"))
                events.append(VADEvent("onset", onset_at, start, 1.0))
            if before < offset_at <= self.stream_ms and (start, "off") not in self._reported:
                events.append(self._offset(start, end, offset_at))
        return events

    def end_segment(self) -> VADEvent | None:
        """The turn ended inside the hangover: the segment's offset now, not later (scripted
        segments are separate already, so speech after this has its own onset)."""
        for start, end in self.segments:
            t = self.stream_ms
            if end <= t < end + self.hangover_ms and (start, "off") not in self._reported:
                return self._offset(start, end, t)
        return None

    def _offset(self, start: int, end: int, at_ms: int) -> VADEvent:
        self._reported.add((start, "off"))
        return VADEvent("offset", at_ms, start, 0.0, speech_end_ms=end)


class FakeTranscriber:
    """Scripted transcripts: the n-th committed utterance reads `texts[n]` ("" after them)."""

    def __init__(self, texts: Iterable[str] = ()) -> None:
        self.texts = list(texts)
        self.partials: asyncio.Queue[Transcript] = asyncio.Queue(16)
        self.fed_ms = 0.0
        self.calls: list[str] = []
        self.committed: list[str] = []
        self.closed = False
        # the decoder's probability for each word of the speculative final (texts[0]); its
        # words then start 200 ms apart, the last where the audio fed so far ends: where a
        # word Whisper guessed at the end of a phrase cut short starts
        self.word_p: tuple[float, ...] | None = None
        self.endings: tuple[str, ...] = ()  # the speculative final's other readings

    def feed(self, pcm16: Int16Array) -> None:
        self.fed_ms += len(pcm16) * 1000 / _VAD_RATE

    def begin_final(self) -> None:
        self.calls.append("begin_final")

    def cancel(self) -> None:
        self.calls.append("cancel")

    def reset(self) -> None:
        self.calls.append("reset")
        self.fed_ms = 0.0

    def publish_partial(self, text: str) -> None:
        """A partial decode of the current utterance, as the real transcriber posts them."""
        self.partials.put_nowait(Transcript(text, "en", False, self.fed_ms, 1.0))

    async def peek_final(self) -> Transcript:
        """The text the next commit will return, if nothing changes (a speculative final)."""
        if [c for c in self.calls if c != "peek_final"][-1:] != ["begin_final"]:
            raise RuntimeError("no speculative final is running")
        self.calls.append("peek_final")
        since = len(self.calls)
        await asyncio.sleep(0)
        if {"cancel", "reset"} & set(self.calls[since:]):
            raise RuntimeError("the speculative final was abandoned")
        text = self.texts[0] if self.texts else ""
        starts = None
        if self.word_p is not None:
            n = len(self.word_p)
            starts = tuple(self.fed_ms - 200.0 * (n - 1 - i) for i in range(n))
        return Transcript(text, "en", True, self.fed_ms, 1.0, self.word_p, starts, self.endings)

    async def commit(self) -> Transcript:
        self.calls.append("commit")
        await asyncio.sleep(0)  # a decode result arrives on a later loop turn
        text = self.texts.pop(0) if self.texts else ""
        self.committed.append(text)
        audio_ms, self.fed_ms = self.fed_ms, 0.0
        return Transcript(text, "en", True, audio_ms, 1.0)

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class _Stream:
    """One Synthesize call on a FakeTTS."""

    tts: FakeTTS
    chunks: AsyncIterable[pb.TextChunk] | Iterable[pb.TextChunk]
    cancelled: bool = False
    frames: int = 0
    _task: asyncio.Task[None] | None = None
    _queue: asyncio.Queue[pb.AudioFrame | BaseException | None] = field(
        default_factory=asyncio.Queue
    )

    def __aiter__(self) -> AsyncIterator[pb.AudioFrame]:
        self._task = asyncio.create_task(self._produce(), name="fake-tts")
        return self._frames()

    async def _frames(self) -> AsyncIterator[pb.AudioFrame]:
        try:
            while (item := await self._queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel()

    def cancel(self) -> bool:
        self.cancelled = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        return True

    async def _texts(self) -> AsyncIterator[pb.TextChunk]:
        if isinstance(self.chunks, AsyncIterable):
            async for chunk in self.chunks:
                yield chunk
        else:
            for chunk in self.chunks:
                yield chunk

    async def _produce(self) -> None:
        tts = self.tts
        texts = self._texts()
        try:
            units, chars = 0, 0
            async for chunk in texts:
                if chunk.session_id not in tts.live:  # as the worker: read the first chunk,
                    await _drain(texts)  # then the rest (to is_final, 0.5 s at most), then fail
                    raise ModelNotFound(f"no session {chunk.session_id!r} on worker {tts.name}")
                chars += len(chunk.text)
                if chars > tts.max_text_chars:
                    raise InvalidArgument(f"text too long: {chars} characters > max_text_chars "
                                          f"{tts.max_text_chars}")  # fmt: skip
                if chunk.text:
                    tts.texts.append(chunk.text)
                    await self._speak(chunk.session_id, units, chunk.text)
                    units += 1
                if chunk.is_final or tts.state == "stopped":
                    break
            self._queue.put_nowait(None)
        except DuplexError as exc:
            self._queue.put_nowait(exc)

    async def _speak(self, session_id: str, unit: int, text: str) -> None:
        tts = self.tts
        for i in range(tts.frames_per_unit):
            await tts.gate(self)
            if tts.state == "stopped":
                return
            seq = next(tts.seq)
            tts.frames_sent += 1
            if tts.state == "paused":
                tts.frames_after_pause += 1
            self._queue.put_nowait(pb.AudioFrame(
                pcm=tts.pcm, sample_rate=48_000, frame_ms=FRAME_MS, seq=seq, unit=unit,
                unit_text=text if i == 0 else "", is_last=False,
            ))  # fmt: skip
            self.frames += 1
            await asyncio.sleep(tts.frame_interval_s)


async def _drain(texts: AsyncIterator[pb.TextChunk], limit_s: float = 0.5) -> None:
    async def consume() -> None:
        async for chunk in texts:
            if chunk.is_final:
                return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(consume(), limit_s)


class FakeTTS:
    """A worker client (`TtsApi`) that speaks `frames_per_unit` frames per text piece."""

    def __init__(
        self,
        name: str = "fake",
        *,
        model_id: str = "fake-voice",
        frames_per_unit: int = 50,
        frame_interval_s: float = 0.002,
        level: int = 8000,
        max_text_chars: int = 4000,
    ) -> None:
        self.name, self.addr, self.model_id = name, f"fake://{name}", model_id
        self.frames_per_unit, self.frame_interval_s = frames_per_unit, frame_interval_s
        self.pcm = np.full(_OUT_SAMPLES, level, dtype="<i2").tobytes()
        self.seq = itertools.count()
        self.state = "idle"  # idle | paused | stopped
        self.controls: list[tuple[str, float]] = []  # (PAUSE|RESUME|STOP, perf_counter)
        self.sessions: list[str] = []  # every StartSession's id, re-attachments included
        self.live: set[str] = set()  # the sessions this worker has now
        self.ended: list[str] = []
        self.texts: list[str] = []  # every text piece it spoke
        self.max_text_chars = max_text_chars
        self.restarts = 0
        self.streams: list[_Stream] = []
        self.frames_sent = 0
        self.frames_after_pause = 0
        self.dead: DuplexError | None = None
        self._resumed = asyncio.Event()

    def die(self, reason: str = "worker went away") -> None:
        """Every call from now on fails as if the process were gone."""
        self.dead = DaemonUnavailable(reason)

    def restart(self) -> None:
        """The worker process restarted (or ended every session as idle): its sessions are
        gone; calls naming one answer NOT_FOUND, a StartSession makes a new one."""
        self.live.clear()
        self.restarts += 1

    def _check(self) -> None:
        if self.dead is not None:
            raise self.dead

    def _check_session(self, session_id: str) -> None:
        self._check()
        if session_id not in self.live:
            raise ModelNotFound(f"no session {session_id!r} on worker {self.name}")

    async def gate(self, stream: _Stream) -> None:
        self._check()
        while self.state == "paused":
            self._resumed.clear()
            await self._resumed.wait()
            self._check()

    # -- TtsApi --------------------------------------------------------------------------------

    async def start_session(
        self, model_id: str = "", voice: str = "", language: str = "", session_id: str = ""
    ) -> pb.StartSessionResp:
        self._check()
        self.sessions.append(session_id)
        self.live.add(session_id)
        return pb.StartSessionResp(session_id=session_id, model_id=model_id or self.model_id,
                                   sample_rate=48_000, frame_ms=FRAME_MS,
                                   worker_name=self.name)  # fmt: skip

    def open_stream(self, chunks: AsyncIterable[pb.TextChunk] | Iterable[pb.TextChunk]) -> _Stream:
        self.state = "idle"
        stream = _Stream(self, chunks)
        self.streams.append(stream)
        return stream

    async def control(
        self, session_id: str, command: int, *, deadline_s: float | None = None
    ) -> pb.ControlResp:
        self._check_session(session_id)
        name = pb.Command.Name(command)  # type: ignore[arg-type]
        self.controls.append((name, time.perf_counter()))
        self.state = {"PAUSE": "paused", "RESUME": "idle", "STOP": "stopped"}[name]
        self._resumed.set()
        return pb.ControlResp(ok=True, state=self.state, last_seq=self.frames_sent)

    def commands(self) -> list[str]:
        return [name for name, _ in self.controls]

    async def end_session(self, session_id: str) -> pb.EndSessionResp:
        self.ended.append(session_id)
        self._check_session(session_id)
        self.live.discard(session_id)
        return pb.EndSessionResp(ok=True)

    async def load_model(self, model_id: str) -> pb.LoadModelResp:
        self._check()
        return pb.LoadModelResp(model=self._info(), already_resident=True)

    async def capabilities(
        self,
        timeout: float | None = None,  # noqa: ASYNC109  # a gRPC deadline in the real client
    ) -> pb.GetCapResp:
        self._check()
        return pb.GetCapResp(worker_name=self.name, audio=pb.AudioSpec(sr=48_000, frame_ms=20),
                             resident_models=[self.model_id])  # fmt: skip

    async def list_models(self) -> pb.ListModelsResp:
        self._check()
        return pb.ListModelsResp(models=[self._info()])

    async def aclose(self) -> None:
        pass

    def _info(self) -> pb.ModelInfo:
        return pb.ModelInfo(id=self.model_id, family="fake", state=pb.RESIDENT, resident=True,
                            is_default=True, languages=["en"])  # fmt: skip


class FakeEndOfTurn:
    """An `EndOfTurn` whose answers are scripted (True = complete); then always complete."""

    name = "fake"
    priority = "default"

    def __init__(self, answers: Iterable[bool] = ()) -> None:
        self.answers = list(answers)
        self.asked_ms: list[float] = []  # the turn audio's length at each question

    async def decide(self, audio: Int16Array) -> Decision:
        self.asked_ms.append(len(audio) * 1000 / _VAD_RATE)
        await asyncio.sleep(0)  # answered on a later loop turn, as from the decision thread
        complete = self.answers.pop(0) if self.answers else True
        return Decision(complete, 0.9 if complete else 0.1, 1.0)


class RecordingTransport:
    """A `Transport` that keeps everything: `events` (dicts) and `audio` (messages)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.audio: list[bytes] = []

    async def send_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    async def send_audio(self, message: bytes) -> None:
        self.audio.append(message)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]
