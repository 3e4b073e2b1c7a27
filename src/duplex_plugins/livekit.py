"""duplex's TTS worker as a LiveKit Agents TTS (``livekit-agents`` 1.8).

    from duplex_plugins.livekit import TTS

    session = AgentSession(tts=TTS(model="piper-en-us-joe"), ...)

`TTS` streams: `synthesize(text)` and `stream()` both open one worker Synthesize call per
segment and push the worker's 48 kHz 20 ms frames into LiveKit's ``AudioEmitter``
(``audio/pcm``, ``frame_size_ms=20``) as they arrive. A stream's text is fed to the worker as it
is pushed (the worker cuts clauses itself), so speech starts before the LLM has finished.

- `aclose()` on a stream mid-utterance sends STOP to the worker; the stream's `stop_report`
  holds the worker's answer and the TTS emits ``worker_stopped`` with it.
- Errors arrive as LiveKit's own: an unknown model is ``APIStatusError`` 404, an unknown voice
  400, weights not pulled / extra missing 412 (none retried), a busy worker 429 and an
  unreachable one ``APIConnectionError`` (both retried by LiveKit), always with the worker's
  message.
- LiveKit 1.8.9 drops the text of a second segment pushed into one `SynthesizeStream` (after a
  ``flush()``): use one stream per segment, as its `tts_node` does.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Literal

import grpc

try:
    from livekit.agents import (
        APIConnectionError,
        APIConnectOptions,
        APIError,
        APIStatusError,
        APITimeoutError,
        tts,
        utils,
    )
    from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS
except ImportError as exc:  # the extra is not installed
    raise ImportError(
        "duplex_plugins.livekit needs LiveKit Agents: pip install 'duplex[livekit]' "
        "(or `uv sync --extra livekit`)"
    ) from exc

from duplex_plugins._worker import (
    FRAME_MS,
    SAMPLE_RATE,
    Speech,
    SpeechOptions,
    SpeechTiming,
    StopReport,
    WorkerLink,
    WorkerModel,
    error_kind,
    http_status,
)
from duplexd.errors import DuplexError

__all__ = ["TTS", "ChunkedStream", "SynthesizeStream", "api_error"]

Events = Literal["worker_stopped"]


def api_error(exc: DuplexError) -> APIError:
    """The LiveKit error for a worker error, carrying the worker's message."""
    kind = error_kind(exc)
    if kind == "unavailable":
        return APIConnectionError(str(exc))
    body = {"status": exc.status, "message": exc.message, "hint": exc.hint}
    # 4xx other than 429 are never retried by LiveKit; 429 (busy) and 5xx are
    return APIStatusError(str(exc), status_code=http_status(exc), body=body)


class TTS(tts.TTS[Events]):
    """A LiveKit TTS backed by a duplex worker.

    `worker`: ``HOST:PORT``, a daemon name from ``duplexctl up`` (or a fleet worker's name),
    or None: the Redis fleet when `redis_url` / ``DUPLEX_REDIS_URL`` is set (least busy worker,
    the model resident preferred), else the local worker. `model`, `voice`, `language`: the
    worker session's options (empty: the worker's default model, the model's default voice).
    """

    def __init__(
        self,
        *,
        worker: str | None = None,
        redis_url: str | None = None,
        model: str = "",
        voice: str = "",
        language: str = "",
        api_key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True),
            sample_rate=SAMPLE_RATE,
            num_channels=1,
        )
        self._opts = SpeechOptions(model, voice, language)
        self._link = WorkerLink(
            worker, redis_url=redis_url, api_key=api_key, credentials=credentials
        )
        self._streams: weakref.WeakSet[ChunkedStream | SynthesizeStream] = weakref.WeakSet()

    @property
    def model(self) -> str:
        return self._opts.model or "default"

    @property
    def provider(self) -> str:
        return "duplex"

    @property
    def options(self) -> SpeechOptions:
        return self._opts

    @property
    def worker_addr(self) -> str:
        """The worker's address (once resolved: the first synthesis, `prewarm` or a listing)."""
        return self._link.addr

    def update_options(
        self, *, model: str | None = None, voice: str | None = None, language: str | None = None
    ) -> None:
        """New options for the next segments (a model or LoRA voice switch between turns).
        Changing the model without a voice resets the voice to the new model's default."""
        self._opts = SpeechOptions(
            self._opts.model if model is None else model,
            (self._opts.voice if model is None else "") if voice is None else voice,
            self._opts.language if language is None else language,
        )

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> ChunkedStream:
        stream = ChunkedStream(tts=self, input_text=text, conn_options=conn_options)
        self._streams.add(stream)
        return stream

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> SynthesizeStream:
        stream = SynthesizeStream(tts=self, conn_options=conn_options)
        self._streams.add(stream)
        return stream

    async def warm(self) -> str:
        """Connect and open a session for the current options now (loading the model if the
        worker has not); returns the model id. LiveKit's sync `prewarm()` cannot wait for this."""
        try:
            return await self._link.prepare(self._opts)
        except DuplexError as exc:
            raise api_error(exc) from exc

    async def list_models(self) -> list[WorkerModel]:
        """The worker's catalog: every model, resident or not, with its state."""
        try:
            return await self._link.list_models()
        except DuplexError as exc:
            raise api_error(exc) from exc

    async def aclose(self) -> None:
        for stream in list(self._streams):
            await stream.aclose()
        await self._link.aclose()

    # -- shared by the two stream kinds -----------------------------------------------------

    async def _speak(
        self,
        speech: Speech,
        emitter: tts.AudioEmitter,
        owner: ChunkedStream | SynthesizeStream,
        timeout_s: float,
    ) -> None:
        """Push the worker's frames into LiveKit as they come; stop the worker if cut short."""
        owner.timings.append(speech.timing)
        try:
            async for frame in speech.frames(frame_timeout_s=timeout_s):
                emitter.push(frame.pcm)
        except DuplexError as exc:
            raise api_error(exc) from exc
        except TimeoutError as exc:
            raise APITimeoutError(
                f"duplex worker {self._link.addr}: no audio for {timeout_s:g} s"
            ) from exc
        except BaseException:  # cancelled (the stream's aclose) or failing: stop the worker
            report = await speech.stop(time.perf_counter())
            if report is not None:
                owner.stop_report = report
                self.emit("worker_stopped", report)
            raise
        finally:
            await speech.aclose()


class ChunkedStream(tts.ChunkedStream):
    """`TTS.synthesize(text)`: the whole text in one worker Synthesize call."""

    def __init__(self, *, tts: TTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._duplex = tts
        self._opts = tts.options
        self.timings: list[SpeechTiming] = []
        self.stop_report: StopReport | None = None

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=SAMPLE_RATE,
            num_channels=1,
            mime_type="audio/pcm",
            frame_size_ms=FRAME_MS,
            stream=False,
        )
        speech = self._duplex._link.speech(self._opts)
        speech.push_text(self._input_text)
        speech.end_input()
        await self._duplex._speak(speech, output_emitter, self, self._conn_options.timeout)
        output_emitter.flush()


class SynthesizeStream(tts.SynthesizeStream):
    """`TTS.stream()`: text pushed as it comes; each segment is one worker Synthesize call that
    starts with the segment's first text and gets the rest as it is pushed."""

    def __init__(self, *, tts: TTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._duplex = tts
        self._opts = tts.options
        self.timings: list[SpeechTiming] = []
        self.stop_report: StopReport | None = None

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=SAMPLE_RATE,
            num_channels=1,
            mime_type="audio/pcm",
            frame_size_ms=FRAME_MS,
            stream=True,
        )
        segments: utils.aio.Chan[Speech] = utils.aio.Chan()
        waiting: list[Speech] = []

        async def read_input() -> None:
            speech: Speech | None = None
            async for data in self._input_ch:
                if isinstance(data, self._FlushSentinel):
                    if speech is not None:
                        speech.end_input()
                        speech = None
                    continue
                if speech is None:
                    self._mark_started()
                    speech = self._duplex._link.speech(self._opts)
                    waiting.append(speech)
                    segments.send_nowait(speech)
                speech.push_text(data)
            if speech is not None:
                speech.end_input()
            segments.close()

        reader = asyncio.create_task(read_input(), name="duplex-tts-input")
        try:
            async for speech in segments:
                waiting.remove(speech)
                output_emitter.start_segment(segment_id=speech.id)
                await self._duplex._speak(speech, output_emitter, self, self._conn_options.timeout)
                output_emitter.end_segment()
        finally:
            await utils.aio.cancel_and_wait(reader)
            for speech in waiting:  # segments never started: nothing reached the worker
                await speech.aclose()
