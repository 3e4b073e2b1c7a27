"""Speech recognition: the engine contract and the streaming layer that hides its latency.

Whisper is not a streaming model: every decode re-reads a whole utterance, and its encoder
always runs on a 30 s window, so a decode costs about the same (≈ 0.4 s for tiny.en on two
cores) whether the utterance is 1 s or 5 s long. End-of-turn latency is therefore won by
*when* decodes start, not by making them shorter. `StreamingTranscriber` does three things:

- partial decodes while the user speaks (for live captions and early intent), at most one in
  flight and at most one per `partial_interval_ms` of new audio;
- a speculative final decode the caller starts the moment VAD reports silence
  (`begin_final`), overlapping the endpoint timeout, then `commit()` (reuse it) or
  `cancel()` (the user went on talking);
- decodes run on the transcriber's own threads (one for finals, one for partials), so the
  event loop never blocks; with a second, lower-priority copy of the model for partials
  (`partial_engine`), the final that the reply waits for never queues behind a caption.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from types import TracebackType
from typing import NamedTuple

import numpy as np

from duplexd.audio.frames import ASR_SAMPLE_RATE
from duplexd.audio.pcm import Float32Array, Int16Array

__all__ = ["ASREngine", "Decoded", "StreamingTranscriber", "Transcript"]

log = logging.getLogger(__name__)

PCM16 = Int16Array


@dataclass(frozen=True, slots=True)
class Transcript:
    """One decode of one utterance (so far, when `is_final` is False)."""

    text: str
    language: str | None
    is_final: bool
    audio_ms: float
    """Length of the audio this text was decoded from."""
    decode_ms: float
    """Wall time the engine spent: a measurement for metrics, never an input to logic."""
    word_p: tuple[float, ...] | None = None
    """The probability the decoder gave each word of `text` (split on spaces; a word's lowest
    token, punctuation aside), where the engine tells: Whisper guesses the end of a phrase cut
    short ("a table for" → "a table for two."), and a guessed word is an unsure one."""
    word_start_ms: tuple[float, ...] | None = None
    """Where each word of `text` starts in the audio, where the engine tells (faster-whisper
    aligns an unsure ending): a guessed word starts where the speech had already ended."""
    endings: tuple[str, ...] = ()
    """Other readings of the last word that the decoder nearly wrote, each as the whole text up
    to it ("… leaves it" → "… leaves at"), where the engine tells: a misheard last word often
    hides the one said, and with it whether the sentence stopped mid-way."""


class Decoded(NamedTuple):
    """What an engine's `_decode` returns."""

    text: str
    language: str | None
    word_p: tuple[float, ...] | None = None  # see Transcript.word_p
    word_start_ms: tuple[float, ...] | None = None  # see Transcript.word_start_ms
    endings: tuple[str, ...] = ()  # see Transcript.endings


class ASREngine(ABC):
    """A blocking speech-to-text engine for whole utterances of 16 kHz mono int16.

    `transcribe` blocks for hundreds of milliseconds: call it from a worker thread (as
    `StreamingTranscriber` does), never from the event loop. Subclasses implement `name`
    and `_decode`.
    """

    sample_rate: int = ASR_SAMPLE_RATE

    @property
    @abstractmethod
    def name(self) -> str:
        """Engine and model, for logs and metrics (e.g. ``faster-whisper:tiny.en``)."""

    @abstractmethod
    def _decode(self, audio: Float32Array, prompt: str | None) -> Decoded:
        """Text and language of `audio` (float32 in [-1, 1], never empty)."""

    def transcribe(self, pcm16: PCM16, *, prompt: str | None = None) -> Transcript:
        """Decode a whole utterance; `prompt` biases spelling (names, jargon)."""
        pcm = _check_pcm16(pcm16)
        audio_ms = len(pcm) * 1000 / self.sample_rate
        if len(pcm) == 0:  # Whisper engines fail or hallucinate on empty input
            return Transcript("", None, True, 0.0, 0.0)
        started = time.perf_counter()
        decoded = self._decode(pcm.astype(np.float32) / 32768.0, prompt)
        decode_ms = (time.perf_counter() - started) * 1000
        text = decoded.text.strip()
        word_p, starts, words = decoded.word_p, decoded.word_start_ms, len(text.split())
        # not the words of this text: say nothing rather than misplace them
        word_p = word_p if word_p is not None and len(word_p) == words else None
        starts = starts if starts is not None and len(starts) == words else None
        return Transcript(
            text, decoded.language, True, audio_ms, decode_ms, word_p, starts, decoded.endings
        )


def _check_pcm16(pcm16: PCM16) -> PCM16:
    arr = np.asarray(pcm16)
    if arr.dtype != np.int16 or arr.ndim != 1:
        raise TypeError(f"ASR expects 1-D int16 PCM, got {arr.dtype} with shape {arr.shape}")
    return arr


@dataclass(slots=True)
class _Decode:
    task: asyncio.Task[Transcript]
    samples: int  # how much of the utterance this decode covers


class StreamingTranscriber:
    """Partial and speculative-final decodes of one utterance at a time, over any engine.

    Call everything from one event loop. Life of an utterance:
    `feed()` per frame → (VAD silence) `begin_final()` → either `commit()` (end of turn: the
    transcript, and the transcriber is ready for the next utterance) or `cancel()` (speech
    resumed: keep feeding). `finalize()` is `begin_final()` + `commit()`.

    A decode that is already running cannot be interrupted (CTranslate2 and torch have no
    cancel), so `begin_final` handles an in-flight partial like this: if it covers every
    sample fed so far, it *becomes* the final (no extra decode); otherwise its result is
    dropped and the final decode starts on its own thread. With `partial_engine` (a second
    copy of the model, loaded at a lower CPU priority: duplexd.priority) the final never
    waits for the partial and takes the CPU first; with one engine for both, the engine
    runs them in turn, so the final waits for at most one partial. Partials are skipped, not
    queued, while one is in flight.
    """

    def __init__(
        self,
        engine: ASREngine,
        *,
        partial_interval_ms: int | None = 500,
        prompt: str | None = None,
        max_queued_partials: int = 16,
        partial_engine: ASREngine | None = None,
    ) -> None:
        if partial_interval_ms is not None and partial_interval_ms <= 0:
            raise ValueError("partial_interval_ms must be positive (None disables partials)")
        self.engine = engine
        self.partial_engine = partial_engine or engine
        self.partial_interval_ms = partial_interval_ms
        self.prompt = prompt
        self.partials: asyncio.Queue[Transcript] = asyncio.Queue(max_queued_partials)
        """Partial transcripts, newest last; the oldest is dropped when nobody reads."""
        self.decodes = 0
        """Decodes actually run by the engine (queued-then-cancelled ones do not count)."""
        # None: no partials, only finals (saves CPU on small machines).
        self._interval: int | None = None
        if partial_interval_ms is not None:
            self._interval = engine.sample_rate * partial_interval_ms // 1000
        # With a partial engine, finals and partials run on threads of their own (a final never
        # queues behind a partial); one engine for both runs them in turn on one thread.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr-decode")
        self._partial_executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr-decode-partial")
            if partial_engine is not None
            else self._executor
        )
        self._count_lock = threading.Lock()
        self._tasks: set[asyncio.Task[Transcript]] = set()
        self._closed = False
        self._generation = 0  # bumped by reset(): results of older decodes are ignored
        self._chunks: list[PCM16] = []
        self._total = 0
        self._partial_from = 0  # samples covered when the last partial started
        self._partial: _Decode | None = None
        self._final: _Decode | None = None

    # --- audio in ----------------------------------------------------------------------

    @property
    def audio_ms(self) -> float:
        """Length of the current utterance."""
        return self._total * 1000 / self.engine.sample_rate

    def feed(self, pcm16: PCM16) -> None:
        """Append audio to the current utterance; may start a partial decode."""
        if self._closed:
            raise RuntimeError("StreamingTranscriber is closed")
        pcm = _check_pcm16(pcm16)
        if len(pcm):
            self._chunks.append(pcm.copy())
            self._total += len(pcm)
            self._maybe_start_partial()

    # --- end of utterance --------------------------------------------------------------

    def begin_final(self) -> None:
        """Start the final decode now (speculatively); idempotent until commit/cancel."""
        if self._final is not None or self._total == 0:
            return
        partial = self._partial
        if partial is not None and partial.samples == self._total:
            self._final = partial  # the running partial already covers everything
        else:
            self._final = self._start_decode(self._total)

    async def commit(self) -> Transcript:
        """The final transcript of everything fed; re-decodes only if audio came after
        `begin_final`. Ends the utterance: the next `feed` starts a new one.

        Raises RuntimeError if `reset()` or `cancel()` abandons the decode it waits for.
        """
        self.begin_final()
        while (final := self._final) is not None:
            # wait() rather than await: cancelling our caller must not cancel the decode,
            # and a decode cancelled by reset()/cancel() must not look like our cancellation.
            await asyncio.wait({final.task})
            if final.task.cancelled():
                raise RuntimeError("commit() interrupted: the utterance was reset or cancelled")
            transcript = final.task.result()
            if final.samples == self._total:
                self._reset_utterance()
                return replace(transcript, is_final=True)
            self._final = self._start_decode(self._total)  # new audio: decode it all
        self._reset_utterance()
        return Transcript("", None, True, 0.0, 0.0)

    async def peek_final(self) -> Transcript:
        """The speculative final decode started by `begin_final`, without ending the utterance.

        Raises RuntimeError when it is abandoned (`cancel`/`reset`: the user went on) or none
        is running."""
        final = self._final
        if final is None:
            raise RuntimeError("no speculative final is running")
        await asyncio.wait({final.task})
        if final.task.cancelled() or final is not self._final:
            raise RuntimeError("the speculative final was abandoned")
        return replace(final.task.result(), is_final=True)

    async def finalize(self) -> Transcript:
        """Decode the whole utterance once and end it."""
        return await self.commit()

    def cancel(self) -> None:
        """Drop the speculative final (the user kept talking); partials resume."""
        final, self._final = self._final, None
        if final is not None and final is not self._partial:
            final.task.cancel()  # prevents it from running if it is still queued
        self._maybe_start_partial()

    def reset(self) -> None:
        """Abandon the current utterance: audio, pending decodes and unread partials."""
        self._reset_utterance()

    # --- lifecycle -----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Cancel pending decodes and wait for a running one, so no thread outlives us."""
        if self._closed:
            return
        self._closed = True
        self._reset_utterance()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Each executor has one thread and runs in order: once this no-op ran, nothing runs.
        loop = asyncio.get_running_loop()
        for executor in {self._executor, self._partial_executor}:
            await loop.run_in_executor(executor, _noop)
            executor.shutdown(wait=True)  # joins an idle thread: microseconds

    async def __aenter__(self) -> StreamingTranscriber:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- internals -----------------------------------------------------------------------

    def _clear_utterance(self) -> None:
        self._chunks = []
        self._total = 0
        self._partial_from = 0
        self._partial = None
        self._final = None

    def _reset_utterance(self) -> None:
        self._generation += 1
        for task in self._tasks:
            task.cancel()  # queued decodes never run; a running one finishes, ignored
        self._clear_utterance()
        while not self.partials.empty():
            self.partials.get_nowait()

    def _maybe_start_partial(self) -> None:
        new = self._total - self._partial_from
        due = self._interval is not None and new > 0 and new >= self._interval
        if due and self._partial is None and self._final is None and not self._closed:
            self._partial_from = self._total
            self._partial = self._start_decode(self._total, partial=True)
            generation = self._generation
            self._partial.task.add_done_callback(
                lambda task: self._on_partial_done(task, generation)
            )

    def _on_partial_done(self, task: asyncio.Task[Transcript], generation: int) -> None:
        if generation != self._generation:
            return  # an abandoned utterance
        if self._partial is not None and self._partial.task is task:
            self._partial = None
        if task.cancelled() or self._final is not None:
            return  # stale: the final decode supersedes it
        if (exc := task.exception()) is not None:
            log.warning("partial ASR decode failed: %r", exc)
            return
        self._publish_partial(replace(task.result(), is_final=False))
        self._maybe_start_partial()  # speech went on while we decoded

    def _publish_partial(self, transcript: Transcript) -> None:
        if self.partials.full():
            self.partials.get_nowait()  # the newest partial is the one worth keeping
        self.partials.put_nowait(transcript)

    def _start_decode(self, samples: int, *, partial: bool = False) -> _Decode:
        if len(self._chunks) > 1:  # compact, so later snapshots are views, not copies
            self._chunks = [np.concatenate(self._chunks)]
        audio = self._chunks[0][:samples]
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._run_decode(audio, partial), name="asr-decode")
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        return _Decode(task, samples)

    def _forget(self, task: asyncio.Task[Transcript]) -> None:
        """Drop a finished task; read its error so asyncio does not warn about an
        exception nobody retrieved (the awaiting caller, if any, still gets it)."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("ASR decode failed", exc_info=task.exception())

    async def _run_decode(self, audio: PCM16, partial: bool) -> Transcript:
        loop = asyncio.get_running_loop()
        executor, engine = (
            (self._partial_executor, self.partial_engine) if partial
            else (self._executor, self.engine)
        )  # fmt: skip
        return await loop.run_in_executor(executor, self._decode_blocking, engine, audio)

    def _decode_blocking(self, engine: ASREngine, audio: PCM16) -> Transcript:
        with self._count_lock:
            self.decodes += 1
        return engine.transcribe(audio, prompt=self.prompt)


def _noop() -> None:
    """A barrier for the single-thread executor."""
