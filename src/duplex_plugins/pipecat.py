"""duplex's TTS worker as a Pipecat TTS service (``pipecat-ai`` 1.14).

    from duplex_plugins.pipecat import DuplexTTSService

    tts = DuplexTTSService(settings=DuplexTTSService.Settings(model="piper-en-us-joe"))
    worker = PipelineWorker(Pipeline([..., llm, tts, transport.output()]))

`run_tts(text, context_id)` speaks `text` in one worker Synthesize call and yields the worker's
48 kHz 20 ms frames as ``TTSAudioRawFrame``s as they arrive (untouched at a 48 kHz output rate;
otherwise resampled per utterance, with the resampler's tail flushed at its end).

- An ``InterruptionFrame`` stops the worker's synthesis at once: Pipecat cancels `run_tts`,
  which sends STOP to the worker (no frame of the interrupted context is pushed after it); the
  worker's answer is in `stop_reports` and the ``on_worker_stopped`` event.
- Worker errors become Pipecat errors (an ``ErrorFrame`` upstream) with the worker's message and
  a category: unknown model, voice or language, weights not pulled → INVALID_REQUEST (the service
  stops being given work until its settings change), busy → RATE_LIMIT, unreachable →
  CONNECTIVITY, key refused → AUTHENTICATION.
- ``TTSUpdateSettingsFrame(delta=DuplexTTSService.Settings(model=..., voice=...))`` switches the
  model or LoRA voice for the next sentence.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

try:
    from pipecat.frames.frames import (
        CancelFrame,
        EndFrame,
        ErrorFrame,
        Frame,
        StartFrame,
        TTSAudioRawFrame,
    )
    from pipecat.services.settings import TTSSettings
    from pipecat.services.tts_service import TTSService
    from pipecat.transcriptions.language import Language
    from pipecat.utils.errors import ErrorCategory
except ImportError as exc:  # the extra is not installed
    raise ImportError(
        "duplex_plugins.pipecat needs Pipecat: pip install 'duplex[pipecat]' "
        "(or `uv sync --extra pipecat`)"
    ) from exc

from duplex_plugins._worker import (
    SAMPLE_RATE,
    ErrorKind,
    Speech,
    SpeechOptions,
    SpeechTiming,
    StopReport,
    WorkerLink,
    WorkerModel,
    error_kind,
)
from duplexd.audio.resample import StreamResampler
from duplexd.errors import DuplexError

__all__ = ["DuplexTTSService", "DuplexTTSSettings", "error_category"]

_CATEGORIES: dict[ErrorKind, ErrorCategory] = {
    "not_found": ErrorCategory.INVALID_REQUEST,
    "invalid_argument": ErrorCategory.INVALID_REQUEST,
    "failed_precondition": ErrorCategory.INVALID_REQUEST,
    "busy": ErrorCategory.RATE_LIMIT,
    "unauthenticated": ErrorCategory.AUTHENTICATION,
    "unavailable": ErrorCategory.CONNECTIVITY,
    "internal": ErrorCategory.SERVER,
}


def error_category(exc: DuplexError) -> ErrorCategory:
    """Pipecat's category for a worker error (permanent ones take the service off work)."""
    return _CATEGORIES[error_kind(exc)]


@dataclass
class DuplexTTSSettings(TTSSettings):
    """`model` (a catalog id, a LoRA voice's id; None: the worker's default), `voice`,
    `language` (None: the model's defaults)."""


class DuplexTTSService(TTSService):
    """A Pipecat TTS service backed by a duplex worker.

    `worker`: ``HOST:PORT``, a daemon name from ``duplexctl up`` (or a fleet worker's name),
    or None: the Redis fleet when `redis_url` / ``DUPLEX_REDIS_URL`` is set, else the local
    worker. `model`, `voice`, `language` are shorthands for `settings`.
    """

    Settings = DuplexTTSSettings
    _settings: DuplexTTSSettings

    def __init__(
        self,
        *,
        worker: str | None = None,
        redis_url: str | None = None,
        model: str | None = None,
        voice: str | None = None,
        language: str | None = None,
        api_key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        settings: DuplexTTSSettings | None = None,
        **kwargs: Any,
    ) -> None:
        store = self.Settings(model=model, voice=voice, language=language)
        if settings is not None:
            store.apply_update(settings)
        super().__init__(push_start_frame=True, push_stop_frames=True, settings=store, **kwargs)
        self._link = WorkerLink(
            worker, redis_url=redis_url, api_key=api_key, credentials=credentials
        )
        self._speeches: dict[str, list[Speech]] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self.stop_reports: collections.deque[StopReport] = collections.deque(maxlen=64)
        self.timings: collections.deque[SpeechTiming] = collections.deque(maxlen=64)
        self._register_event_handler("on_worker_stopped")

    # -- what users call --------------------------------------------------------------------

    @property
    def options(self) -> SpeechOptions:
        def text(value: object) -> str:
            return value if isinstance(value, str) else ""

        s = self._settings
        return SpeechOptions(text(s.model), text(s.voice), text(s.language))

    @property
    def worker_addr(self) -> str:
        return self._link.addr

    async def list_models(self) -> list[WorkerModel]:
        """The worker's catalog, every model with its state (DuplexError if unreachable)."""
        return await self._link.list_models()

    def can_generate_metrics(self) -> bool:
        return True

    def language_to_service_language(self, language: Language) -> str | None:
        return str(language.value)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        try:  # connect and warm a session, so the first sentence pays neither
            await self._link.prepare(self.options)
        except DuplexError as exc:
            await self._report(exc)

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)
        await self._settle()

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        self._stop_all()
        await self._settle()

    async def cleanup(self) -> None:
        await super().cleanup()  # type: ignore[no-untyped-call]  # pipecat leaves it unannotated
        self._stop_all()
        await self._settle()
        await self._link.aclose()

    async def _update_settings(self, delta: TTSSettings) -> dict[str, Any]:  # type: ignore[override]
        # (TTSService narrows AIService's ServiceSettings to TTSSettings itself)
        changed: dict[str, Any] = await super()._update_settings(delta)
        if {"model", "voice", "language"} & changed.keys():
            await self._link.drop_idle(keep=self.options)  # the old model's lease goes
        return changed

    # -- synthesis --------------------------------------------------------------------------

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        speech = self._link.speech(self.options)
        speech.push_text(text)
        speech.end_input()
        self._speeches.setdefault(context_id, []).append(speech)
        self.timings.append(speech.timing)
        finished = False
        try:
            await self.start_tts_usage_metrics(text)
            # one resampler per utterance, drained at its end (none at the worker's own rate)
            resampler = (
                None
                if self.sample_rate == SAMPLE_RATE
                else StreamResampler(SAMPLE_RATE, self.sample_rate)
            )
            async for frame in speech.frames():
                pcm = frame.pcm
                if resampler is not None:
                    pcm = resampler.process(np.frombuffer(pcm, dtype=np.int16)).tobytes()
                await self.stop_ttfb_metrics()
                if pcm:
                    yield TTSAudioRawFrame(pcm, self.sample_rate, 1, context_id=context_id)
            if resampler is not None and (tail := resampler.flush().tobytes()):
                yield TTSAudioRawFrame(tail, self.sample_rate, 1, context_id=context_id)
            finished = True
        except DuplexError as exc:
            finished = True
            yield ErrorFrame(error=str(exc), exception=exc, category=error_category(exc))
        finally:
            contexts = self._speeches.get(context_id, [])
            if speech in contexts:
                contexts.remove(speech)
            if not contexts:
                self._speeches.pop(context_id, None)
            if finished:
                await speech.aclose()
            else:  # cancelled by an interruption (or the pipeline): the worker stops now
                self._stop_soon(speech)

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        # run_tts is normally cancelled first; this covers a context cancelled between frames
        for speech in self._speeches.pop(context_id, []):
            self._stop_soon(speech)

    def _classify_error(self, exception: Exception) -> ErrorCategory | None:
        return error_category(exception) if isinstance(exception, DuplexError) else None

    # -- stopping ---------------------------------------------------------------------------

    def _stop_soon(self, speech: Speech) -> None:
        """STOP the worker from a task of its own: the interruption is not held up by it."""
        if speech.stop_requested:
            return
        speech.stop_requested = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a generator finalised after its loop ended: nothing to run on
            return
        task = loop.create_task(
            self._stop_speech(speech, time.perf_counter()), name=f"{speech.id}-stop"
        )
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _stop_speech(self, speech: Speech, requested_at: float) -> None:
        report = await speech.stop(requested_at)
        await speech.aclose()
        if report is not None:
            self.stop_reports.append(report)
            await self._call_event_handler("on_worker_stopped", report)

    def _stop_all(self) -> None:
        for speeches in self._speeches.values():
            for speech in speeches:
                self._stop_soon(speech)
        self._speeches.clear()

    async def _settle(self) -> None:
        """Wait for pending STOPs (each bounded by the worker's answer and a grace period)."""
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)

    async def _report(self, exc: DuplexError) -> None:
        await self.push_error(str(exc), exception=exc, category=error_category(exc))
