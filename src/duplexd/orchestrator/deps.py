"""What a `Session` is built from: factories, a registry and a clock, all injected.

The orchestrator owns these seams; production fills them with Silero/WebRTC VAD, the
streaming Whisper transcriber, the configured responder and gRPC clients (`SessionDeps.
production`), and `duplexd.devkit.fakes` fills them with scripted fakes so a whole conversation
(barge-in included) runs in-process in milliseconds (tests/unit/test_session.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from duplexd.asr import ASREngine, StreamingTranscriber, Transcript
from duplexd.audio.pcm import Int16Array
from duplexd.config import OrchestratorConfig
from duplexd.orchestrator.llm import Responder, create_responder, resolve_llm
from duplexd.orchestrator.protocol import Hello
from duplexd.orchestrator.recorder import Recorder
from duplexd.rpc import tts_pb2 as pb
from duplexd.vad import VADEvent, VADParams, create_vad

if TYPE_CHECKING:
    from duplexd.orchestrator.endofturn import EndOfTurn
    from duplexd.orchestrator.registry import Registry
    from duplexd.orchestrator.routing import RoutingPolicy
    from duplexd.orchestrator.telemetry import OrchTelemetry

__all__ = [
    "Clock",
    "SessionDeps",
    "SynthesisStream",
    "Transcriber",
    "TtsApi",
    "Vad",
    "responders",
]

Clock = Callable[[], float]
"""Seconds on a monotonic clock (`time.perf_counter` in production)."""


class Vad(Protocol):
    """A voice activity detector fed 16 kHz int16 audio (duplexd.vad.VoiceActivityDetector)."""

    def process(self, pcm16: Int16Array) -> list[VADEvent]: ...

    @property
    def last_probability(self) -> float: ...

    @property
    def speaking(self) -> bool: ...

    def end_segment(self) -> VADEvent | None: ...


class Transcriber(Protocol):
    """Partial and speculative-final decodes of one utterance (asr.StreamingTranscriber)."""

    partials: asyncio.Queue[Transcript]

    def feed(self, pcm16: Int16Array) -> None: ...

    def begin_final(self) -> None: ...

    def cancel(self) -> None: ...

    def reset(self) -> None: ...

    async def commit(self) -> Transcript: ...

    async def peek_final(self) -> Transcript: ...

    async def aclose(self) -> None: ...


class SynthesisStream(Protocol):
    """One Synthesize call: reply frames as they come; `cancel()` ends it at once."""

    def __aiter__(self) -> AsyncIterator[pb.AudioFrame]: ...

    def cancel(self) -> bool: ...


class TtsApi(Protocol):
    """What the orchestrator asks of a TTS worker (duplexd.rpc.client.TTSClient)."""

    addr: str

    async def start_session(
        self,
        model_id: str = "",
        voice: str = "",
        language: str = "",
        session_id: str = "",
    ) -> pb.StartSessionResp: ...

    def open_stream(
        self, chunks: AsyncIterable[pb.TextChunk] | Iterable[pb.TextChunk]
    ) -> SynthesisStream: ...

    async def control(
        self, session_id: str, command: int, *, deadline_s: float | None = None
    ) -> pb.ControlResp: ...

    async def end_session(self, session_id: str) -> pb.EndSessionResp: ...

    async def load_model(self, model_id: str) -> pb.LoadModelResp: ...

    async def capabilities(
        self,
        timeout: float | None = None,  # noqa: ASYNC109  # a gRPC deadline
    ) -> pb.GetCapResp: ...

    async def list_models(self) -> pb.ListModelsResp: ...

    async def aclose(self) -> None: ...


@dataclass
class SessionDeps:
    """Everything a session needs besides its hello and outbox."""

    config: OrchestratorConfig
    registry: Registry
    policy: RoutingPolicy
    telemetry: OrchTelemetry
    vad: Callable[[], Vad]
    transcriber: Callable[[], Transcriber]
    responder: Callable[[Hello], Responder]
    clock: Clock = time.perf_counter
    recorder: Callable[[str, int], Recorder | None] | None = None
    """(session id, mic sample rate) -> a recorder, or None to record nothing."""
    end_of_turn: EndOfTurn | None = None
    """The end-of-turn model every session shares; None: the fixed-silence rule."""
    warnings: list[str] = field(default_factory=list)
    """Degraded but serving (e.g. the end-of-turn model fell back): shown in /status."""

    @classmethod
    def production(
        cls,
        config: OrchestratorConfig,
        asr: ASREngine,
        registry: Registry,
        policy: RoutingPolicy,
        telemetry: OrchTelemetry,
        end_of_turn: EndOfTurn | None = None,
        *,
        partial_asr: ASREngine | None = None,
    ) -> SessionDeps:
        """The daemon's wiring: real VAD, Whisper transcriber (`partial_asr`: the model copy
        for captions, at a lower priority), responders and recorder."""
        cfg = config
        params = VADParams(
            threshold=cfg.vad.threshold, min_speech_ms=cfg.vad.min_speech_ms,
            hangover_ms=cfg.vad.hangover_ms, aggressiveness=cfg.vad.aggressiveness,
        )  # fmt: skip

        record_dir: Path | None = cfg.sessions.record_dir
        return cls(
            config=cfg,
            registry=registry,
            policy=policy,
            telemetry=telemetry,
            vad=lambda: create_vad(cfg.vad.engine, params),
            transcriber=lambda: StreamingTranscriber(
                asr, partial_interval_ms=cfg.asr.partial_interval_ms, partial_engine=partial_asr
            ),
            responder=responders(cfg),
            recorder=(lambda sid, rate: Recorder(record_dir, sid, rate)) if record_dir else None,
            end_of_turn=end_of_turn,
        )


def responders(config: OrchestratorConfig) -> Callable[[Hello], Responder]:
    """The production responder factory: the hello's `llm` choice, checked against the
    operator's allow-list (`resolve_llm`: raises `LlmNotAllowed` for anything else)."""
    llm = config.llm

    def responder(hello: Hello) -> Responder:
        target = resolve_llm(hello.llm, llm)
        return create_responder(
            target.kind, url=target.url, model=target.model, api_key=target.api_key,
            system_prompt=llm.system_prompt, timeout_s=llm.timeout_s,
            push_max_pending_chars=llm.push_max_pending_chars,
        )  # fmt: skip

    return responder
