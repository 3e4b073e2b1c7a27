"""Typed configuration for both daemons: YAML < ``DUPLEX_*`` environment < CLI flags.

Every knob has a default here and a line of documentation in the sample files under
``configs/``. Unknown keys are errors (a typo must not silently fall back to a default), and
every validation error names the file (or variable, or flag) and the dotted key.

Environment variables: ``DUPLEX_<SECTION>__<KEY>`` (double underscore between levels), e.g.
``DUPLEX_MODEL_MANAGER__TTL_MS=60000``; plus the short aliases in ``ENV_ALIASES``
(``DUPLEX_API_KEY``, ``DUPLEX_REDIS_URL``, ``DUPLEX_MODELS_DIR``).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from duplexd.audio.frames import FRAME_MS, SAMPLE_RATE
from duplexd.config_load import ENV_ALIASES, load_config, repo_root, resolve_path

__all__ = [
    "DEFAULT_WORKER_NAME",
    "ENV_ALIASES",
    "AsrConfig",
    "AuthConfig",
    "LlmConfig",
    "LlmEndpoint",
    "ModelManagerConfig",
    "OrchestratorConfig",
    "RedisConfig",
    "RoutingConfig",
    "ServerConfig",
    "SessionsConfig",
    "TransportConfig",
    "TurnConfig",
    "VadConfig",
    "WorkerConfig",
    "WorkerEndpoint",
    "WorkerSection",
    "WorkerTlsConfig",
    "fleet_worker_name",
    "load_config",
    "repo_root",
    "resolve_path",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AuthConfig(_Section):
    api_key: str | None = Field(None, description="API key required on every RPC and WebSocket")
    allow_insecure_remote: bool = Field(
        False, description="allow binding a non-loopback address without an API key"
    )
    tls_cert: Path | None = Field(None, description="server certificate (PEM) for TLS")
    tls_key: Path | None = Field(None, description="server private key (PEM) for TLS")
    tls_client_ca: Path | None = Field(
        None, description="CA (PEM) that client certs must chain to: mTLS"
    )


class WorkerTlsConfig(_Section):
    """How the orchestrator dials its workers: TLS (and mTLS) or plaintext gRPC."""

    enabled: bool = Field(
        False, description="dial workers over TLS; also on when `ca` or `client_cert` is set"
    )
    ca: Path | None = Field(
        None,
        description="CA bundle (PEM) the workers' certificates must chain to; unset = system roots",
    )
    client_cert: Path | None = Field(
        None, description="client certificate (PEM) for workers that require one (mTLS)"
    )
    client_key: Path | None = Field(None, description="its private key (PEM)")
    server_name: str | None = Field(
        None, description="name the workers' certificates must carry, instead of the host dialed"
    )

    @model_validator(mode="after")
    def _pair(self) -> WorkerTlsConfig:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together (mTLS needs both)")
        return self

    @property
    def active(self) -> bool:
        return self.enabled or self.ca is not None or self.client_cert is not None


class RedisConfig(_Section):
    url: str | None = Field(None, description="redis:// or rediss:// URL; unset = static registry")
    heartbeat_ms: int = Field(1000, gt=0, description="how often workers refresh their entry")
    ttl_ms: int = Field(3000, gt=0, description="entry expiry: a dead worker drops out after this")
    advertise: str | None = Field(
        None, description="HOST:PORT other hosts use to reach this worker"
    )


class WorkerSection(_Section):
    name: str | None = Field(
        None,
        description="name announced to orchestrators; unset: tts-worker@0, or in fleet mode "
        "(redis.url set) tts-<host>-<port>, unique per host and bound port",
    )
    host: str = Field("127.0.0.1", description="gRPC bind address")
    port: int = Field(7001, ge=0, le=65535, description="gRPC port (0 = pick a free one)")
    metrics_port: int = Field(
        9101, ge=0, le=65535, description="Prometheus /metrics port (0 = off)"
    )
    device: str = Field(
        "auto",
        description="auto | cpu | cuda:N; auto: each model's catalog device, torch "
        "families on a CUDA GPU when torch sees one, the rest on the CPU",
    )
    sample_rate: int = Field(
        SAMPLE_RATE, ge=SAMPLE_RATE, le=SAMPLE_RATE, description="wire sample rate (fixed)"
    )
    frame_ms: int = Field(
        FRAME_MS, ge=FRAME_MS, le=FRAME_MS, description="wire frame length (fixed)"
    )
    adapter: str | None = Field(None, description="restrict the worker to one adapter family")
    lead_ms: int = Field(120, ge=0, le=2000, description="audio sent ahead of real time")
    queue_frames: int = Field(
        500, ge=2, description="frames the engine may run ahead of the pacer (10 s)"
    )
    backpressure: Literal["stall", "drop_oldest"] = Field(
        "stall", description="when a client is slower than real time: stall or drop oldest frames"
    )
    max_sessions: int = Field(64, ge=1, description="concurrent sessions before RESOURCE_EXHAUSTED")
    session_idle_timeout_s: float = Field(300.0, gt=0, description="end sessions idle this long")
    max_text_chars: int = Field(4000, ge=1, description="largest text accepted per utterance")
    synth_threads: int = Field(2, ge=1, description="threads running engine generation")
    engine_threads: int = Field(
        1,
        ge=1,
        description="threads inside one synthesis (ONNX intra-op); sessions run in parallel",
    )
    resume_mode: Literal["next_unit", "exact"] = Field(
        "next_unit", description="RESUME at the next text unit (design) or the exact next frame"
    )
    malloc_mmap_threshold_kb: int = Field(
        1024,
        ge=0,
        le=32768,
        description="glibc: blocks above this are mmapped, so freeing them returns the memory to "
        "the OS (with the engines' arenas shrunk after each synthesis, RSS stays flat); "
        "0 = glibc's own sliding threshold, which lets freed synthesis buffers pile up in the heap",
    )


def default_models_dir() -> Path:
    """Where pulled weights go when DUPLEX_MODELS_DIR / models_dir is unset."""
    import platformdirs

    return Path(platformdirs.user_data_dir("duplex")) / "models"


class ModelManagerConfig(_Section):
    default_model_id: str = Field("piper-en-us-joe", description="loaded and warmed at start")
    preload_model_ids: list[str] = Field(default_factory=list, description="also loaded at start")
    ttl_ms: int = Field(600_000, ge=0, description="idle time before a model is unloaded")
    min_residency_ms: int = Field(
        120_000, ge=0, description="never unload a model younger than this"
    )
    evict_check_interval_ms: int = Field(30_000, gt=0, description="evictor period")
    resident_cap: int = Field(3, ge=1, description="most models resident at once (LRU above)")
    max_parallel_loads: int = Field(1, ge=1, description="loads running at once")
    max_pending_loads: int = Field(8, ge=1, description="loads waiting before answering busy")
    memory_headroom_mb: int = Field(256, ge=0, description="memory kept free by the pre-check")
    warmup_text: str = Field("Warm up.", description="hidden utterance synthesized after a load")
    catalog: Path = Field(Path("configs/model_catalog.yaml"), description="model catalog file")
    voicepacks_dir: Path = Field(Path("voicepacks"), description="voicepacks/<family>/<id>/")
    models_dir: Path | None = Field(
        None,
        description="pulled weights, one folder per model id (DUPLEX_MODELS_DIR); "
        "default: the user data dir, e.g. ~/.local/share/duplex/models",
    )

    @property
    def effective_models_dir(self) -> Path:
        """`models_dir`, or the per-user default when unset."""
        return self.models_dir if self.models_dir is not None else default_models_dir()


class WorkerConfig(_Section):
    worker: WorkerSection = Field(default_factory=WorkerSection)
    model_manager: ModelManagerConfig = Field(default_factory=ModelManagerConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)

    def worker_name(self, port: int) -> str:
        """The name this worker goes by once bound to `port`: `worker.name` when given, else
        `fleet_worker_name(port)` in fleet mode (two unnamed workers on one host must not
        claim the same registry entry), else the embedded default `DEFAULT_WORKER_NAME`."""
        if self.worker.name:
            return self.worker.name
        return fleet_worker_name(port) if self.redis.url else DEFAULT_WORKER_NAME


DEFAULT_WORKER_NAME = "tts-worker@0"


def fleet_worker_name(port: int) -> str:
    """``tts-<host>-<port>``: unique per host and port, as a fleet needs its names."""
    return f"tts-{socket.gethostname().split('.')[0]}-{port}"


class ServerConfig(_Section):
    host: str = Field("127.0.0.1", description="HTTP/WebSocket bind address")
    port: int = Field(
        8080, ge=0, le=65535, description="one port: /ws, /healthz, /status, /metrics"
    )
    shutdown_grace_s: float = Field(
        3.0,
        gt=0,
        description="on SIGTERM/Ctrl-C: time to tell open sessions the orchestrator is going "
        "away (WebSocket close 1001), close them and exit; below `duplexctl down`'s 5 s kill",
    )
    status_transcripts: bool = Field(
        False,
        description="GET /status shows each session's last words (transcript_tail); off: "
        "what callers say is theirs, not the operator's dashboard's",
    )


class TransportConfig(_Section):
    webrtc: bool = Field(
        True, description="serve WebRTC (WHIP at /whip; needs the `webrtc` extra: aiortc)"
    )
    ws_fallback: bool = Field(True, description="serve the WebSocket protocol")
    ice_servers: list[str] = Field(
        default_factory=list,
        description="STUN/TURN URLs for WebRTC, e.g. stun:stun.example.org:3478 or "
        "turn:USER:PASS@turn.example.org:3478?transport=udp; empty = loopback/LAN only",
    )


class AsrConfig(_Section):
    engine: Literal["faster-whisper", "openai-whisper"] = Field(
        "faster-whisper", description="ASR engine"
    )
    model: str = Field("tiny.en", description="tiny.en | base | a model directory/checkpoint")
    language: str | None = Field("en", description="spoken language; null = detect")
    compute_type: str = Field("int8", description="CTranslate2 compute type")
    threads: int = Field(
        1, ge=0,
        description="decoder CPU threads (0 = engine default); a turn's decode is mostly the "
        "token-by-token decoder, which a 2nd thread does not speed up, and the other core is "
        "then free for the end-of-turn model",
    )  # fmt: skip
    partial_interval_ms: int = Field(500, ge=100, description="partial transcript cadence")
    device: str = Field("cpu", description="cpu | cuda")
    partials_nice: int = Field(
        10, ge=0, le=19,
        description="partial (caption) decodes run on a second copy of the model this many "
        "Linux nice steps down, so a final never waits behind one and takes the CPU first "
        "(0 = one model for both, no second copy)",
    )  # fmt: skip
    short_form: bool = Field(
        True,
        description="faster-whisper: encode only the utterance (+1 s), not Whisper's 30 s "
        "window (~10x less encoder time); a repetition-looking result is decoded the long way",
    )


class VadConfig(_Section):
    engine: Literal["silero", "webrtc"] = Field("silero", description="VAD engine")
    aggressiveness: int = Field(2, ge=0, le=3, description="WebRTC VAD aggressiveness")
    threshold: float = Field(0.5, gt=0, lt=1, description="speech probability threshold")
    min_speech_ms: int = Field(60, ge=0, description="speech needed before an onset")
    hangover_ms: int = Field(300, ge=0, description="silence before an offset")


# How Smart Turn's attention softmaxes run (orchestrator/endofturn.py: _float_softmax)
SmartTurnSoftmax = Literal["float", "int8"]
# The ASR aligns a transcript's ending to the audio only when Whisper gave its last word less
# than this (asr/faster_whisper.py): `turn.unsure_word_p` above it would find nothing aligned
ALIGN_BELOW_P = 0.9
# Silero goes on saying "speech" for 1-4 frames after a voice has faded out (50-100 ms measured
# on Piper's tails, none on espeak's abrupt ends): quiet frames up to this far before its first
# silent one are counted as the silence they are (`turn.silence_dbfs`, orchestrator/listening.py)
SPEECH_END_LOOKBACK_MS = 100


class TurnConfig(_Section):
    end_of_turn_silence_ms: int = Field(
        500,
        ge=100,
        description="silence that ends the user's turn (the silence rule; with smart-turn, a "
        "'complete' on an unsure last word waits for it too)",
    )
    silence_dbfs: float | None = Field(
        -50.0,
        le=0,
        description="a turn's silence counts from where the voice fell below this level (frame "
        f"RMS), up to {SPEECH_END_LOOKBACK_MS} ms before the VAD, which lags a fading voice, "
        "first heard silence; null: from the VAD's first silent frame",
    )
    false_interruption_ms: int = Field(700, ge=0, description="no words within this = RESUME")
    min_barge_in_words: int = Field(1, ge=1, description="words that make an interruption real")
    echo_guard: bool = Field(True, description="ignore onsets that match the bot's own echo")
    echo_guard_db: float = Field(6.0, description="mic must exceed playback echo by this much")
    end_of_turn: Literal["smart-turn", "silence"] = Field(
        "smart-turn",
        description="how a turn ends: smart-turn (audio model, falls back to silence with a "
        "warning when it cannot load) | silence (end_of_turn_silence_ms, the baseline)",
    )
    smart_turn_model: Path | None = Field(
        None, description="Smart Turn ONNX file (default: the one in the pipecat-ai wheel)"
    )
    smart_turn_threshold: float = Field(
        0.5, gt=0, lt=1, description="probability above which the turn is complete"
    )
    smart_turn_ask_after_ms: int = Field(
        64, ge=20, description="silence before the model is first asked"
    )
    smart_turn_threads: int = Field(
        1, ge=1, description="decision threads shared by all sessions, at top CPU priority"
    )
    smart_turn_op_threads: int = Field(
        1, ge=1, description="cores one decision computes on (its threads share the priority)"
    )
    smart_turn_realtime: bool = Field(
        True,
        description="decision threads in the real-time class (SCHED_FIFO 1) where the OS allows: "
        "a nice value does not rank them above other daemons' work; else nice -20",
    )
    smart_turn_softmax: SmartTurnSoftmax = Field(
        "float",
        description="float: the model's attention softmaxes in float, as its graph says (a "
        "decision 20 % faster) | int8: onnxruntime's fused 8-bit kernel, as pipecat runs it",
    )
    smart_turn_min_silence_ms: int = Field(
        250, ge=20, description="a 'complete' ends the turn no sooner than this much silence"
    )
    smart_turn_reask_ms: int = Field(
        100, ge=20, description="when it says 'not done', ask again after this much more silence"
    )
    smart_turn_max_silence_ms: int = Field(
        900, ge=100, description="the turn ends after this much silence, whatever the model says"
    )
    speculate: bool = Field(
        True,
        description="start the reply (LLM + synthesis, audio held back) at the first pause, "
        "before the turn is confirmed; dropped if the user goes on",
    )
    speculate_after_ms: int = Field(
        40, ge=20, description="silence after which the final ASR decode (and reply) starts"
    )
    transcript_check: bool = Field(
        True,
        description="smart-turn: a transcript ending in a word no sentence ends with ('for', "
        "'the', 'and', 'colour is') overrules 'complete': keep listening",
    )
    unsure_word_p: float = Field(
        0.7,
        ge=0,
        le=ALIGN_BELOW_P,
        description="transcript_check: words at the end that Whisper gave less than this, "
        "and that start where the speech had ended, are read as its guess ('a table for' → "
        "'a table for two.'): the check also reads the text without them; and a 'complete' "
        "whose last word is below it ends at end_of_turn_silence_ms, not the floor (that word "
        "may be misheard: 'Tell me a' → 'Tell me that.'); 0: trust every word",
    )

    @model_validator(mode="after")
    def _silences_in_order(self) -> TurnConfig:
        if not self.smart_turn_min_silence_ms < self.smart_turn_max_silence_ms:
            raise ValueError(
                f"smart_turn_min_silence_ms ({self.smart_turn_min_silence_ms}) must be below "
                f"smart_turn_max_silence_ms ({self.smart_turn_max_silence_ms}): otherwise "
                "every turn would end by the maximum silence"
            )
        return self


class RoutingConfig(_Section):
    policy: str = Field("default", description="routing mode: default | edge | lora")
    prefer_resident: bool = Field(True, description="prefer workers with the model resident")
    policy_file: Path = Field(Path("configs/routing.yaml"), description="routing policy YAML")


class WorkerEndpoint(_Section):
    name: str = Field(..., description="worker name")
    addr: str = Field(..., description="host:port of its gRPC server")


class LlmEndpoint(_Section):
    """One OpenAI-compatible endpoint a client may choose in its hello (`llm.endpoint`)."""

    url: str = Field(..., description="OpenAI-compatible base URL (…/v1)")
    model: str = Field(..., description="LLM model name")
    api_key: SecretStr | None = Field(
        None, description="bearer key, sent to this url only (masked in config dumps)"
    )


class LlmConfig(_Section):
    kind: Literal["builtin", "openai", "push"] = Field("builtin", description="who writes replies")
    url: str | None = Field(None, description="OpenAI-compatible base URL (…/v1)")
    model: str | None = Field(None, description="LLM model name")
    api_key: str | None = Field(None, description="bearer key for the LLM endpoint")
    endpoints: dict[str, LlmEndpoint] = Field(
        default_factory=dict,
        description="the allow-list: OpenAI-compatible endpoints a client may name in its hello "
        "(`llm.endpoint`, or a `llm.url` equal to one of these or to `url` above); a client "
        "never makes the orchestrator call any other address, and each key goes to its own "
        "url only",
    )
    system_prompt: str = Field(
        "You are a helpful voice assistant. Answer briefly, in one or two sentences.",
        description="system prompt for LLM replies",
    )
    timeout_s: float = Field(30.0, gt=0, description="LLM request timeout")
    push_max_pending_chars: int = Field(
        65_536,
        ge=4000,
        description="push mode: reply text (characters; each message counts at least 1) a "
        "session holds ahead of the speech; an `llm` message beyond it is refused with a "
        "`resource_exhausted` error event, nothing below it is ever dropped",
    )


class SessionsConfig(_Section):
    max: int = Field(32, ge=1, description="concurrent client sessions")
    idle_timeout_s: float = Field(600.0, gt=0, description="close sessions idle this long")
    record_dir: Path | None = Field(None, description="opt-in: store session audio here")
    worker_keepalive_s: float = Field(
        60.0,
        gt=0,
        description="how often a session tells its TTS worker it is still there, so the "
        "worker's session_idle_timeout_s (300 s) never ends a live session; keep it below that",
    )
    send_queue_events: int = Field(
        1000,
        ge=16,
        description="events queued for a client that does not read them before the session "
        "is closed (fatal `slow_client` error, WebSocket close 1008); audio beyond "
        "send_queue_audio_frames is dropped first, oldest first",
    )
    send_queue_audio_frames: int = Field(
        100, ge=1, description="reply audio frames (20 ms each) queued for a slow client"
    )


class OrchestratorConfig(_Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    transport: TransportConfig = Field(default_factory=TransportConfig)
    asr: AsrConfig = Field(default_factory=AsrConfig)
    vad: VadConfig = Field(default_factory=VadConfig)
    turn: TurnConfig = Field(default_factory=TurnConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    llm: LlmConfig = Field(default_factory=LlmConfig)
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    worker_tls: WorkerTlsConfig = Field(default_factory=WorkerTlsConfig)
    workers: list[WorkerEndpoint] = Field(
        default_factory=lambda: [WorkerEndpoint(name="tts-worker@0", addr="127.0.0.1:7001")],
        description="static worker list (the embedded default)",
    )
