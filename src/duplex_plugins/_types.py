"""The plain values the plugins hand their users: a model of the worker's catalog, a session's
options, one utterance's timing, and the report of a stop (see `duplex_plugins._worker`)."""

from __future__ import annotations

from dataclasses import dataclass

from duplexd.rpc import tts_pb2 as pb

__all__ = [
    "FRAME_MS",
    "SAMPLE_RATE",
    "SpeechOptions",
    "SpeechTiming",
    "StopReport",
    "WorkerModel",
]

SAMPLE_RATE = 48_000  # the worker's wire format: s16le mono, 20 ms frames
FRAME_MS = 20
_STATES = {
    pb.NOT_LOADED: "not_loaded",
    pb.LOADING: "loading",
    pb.RESIDENT: "resident",
    pb.UNLOADING: "unloading",
    pb.UNAVAILABLE: "unavailable",
}


@dataclass(frozen=True, slots=True)
class WorkerModel:
    """One model of the worker's catalog, as ListModels reports it."""

    id: str
    family: str
    state: str  # not_loaded | loading | resident | unloading | unavailable
    resident: bool
    is_default: bool
    pinned: bool
    refcount: int  # sessions holding it now
    languages: tuple[str, ...]
    tags: tuple[str, ...]
    native_sr: int
    device: str
    base_model: str  # a LoRA voice: the model it attaches to ("" otherwise)
    adapters: tuple[str, ...]  # a base: the LoRA voices attached now
    memory_bytes: int
    unavailable_reason: str

    @classmethod
    def from_pb(cls, m: pb.ModelInfo) -> WorkerModel:
        return cls(
            id=m.id,
            family=m.family,
            state=_STATES.get(m.state, "unknown"),
            resident=m.resident,
            is_default=m.is_default,
            pinned=m.pinned,
            refcount=m.refcount,
            languages=tuple(m.languages),
            tags=tuple(m.tags),
            native_sr=m.native_sr,
            device=m.device,
            base_model=m.base_model,
            adapters=tuple(m.adapters),
            memory_bytes=m.memory_bytes,
            unavailable_reason=m.unavailable_reason,
        )


@dataclass(frozen=True, slots=True)
class SpeechOptions:
    """Per-session options: empty means the worker's default model / the model's default."""

    model: str = ""
    voice: str = ""
    language: str = ""


@dataclass(slots=True)
class SpeechTiming:
    """When one utterance's milestones happened (``time.perf_counter()`` seconds)."""

    session_id: str = ""
    model_id: str = ""
    call_at: float | None = None  # the Synthesize call was opened (session ready)
    first_frame_at: float | None = None  # the worker's first frame arrived over gRPC
    ended_at: float | None = None  # the worker's stream ended
    frames: int = 0  # frames received from the worker


@dataclass(slots=True)
class StopReport:
    """What happened when a framework stopped an utterance mid-stream.

    `stop_last_seq` and `worker_acked_unix` are the worker's own answer to STOP (the seq of the
    last frame it had emitted when STOP took effect, and its clock then); `frames_after_stop`
    counts the frames of this utterance the worker emitted after that (seq > `stop_last_seq`),
    as they arrived on the gRPC stream until the worker ended it.
    """

    session_id: str
    requested_at: float  # perf_counter: the plugin was told to stop
    requested_unix: float
    acked_at: float | None = None  # perf_counter: the worker answered STOP
    worker_acked_unix: float | None = None
    stop_last_seq: int | None = None
    worker_state: str = ""
    frames_delivered: int = 0  # frames handed to the framework
    frames_received: int = 0  # frames of this utterance that arrived from the worker
    frames_after_stop: int = 0
    last_seq: int | None = None  # the last frame of this utterance seen on the stream
    ended_at: float | None = None  # perf_counter: the worker's stream ended
    status: str = ""  # how the stream ended: OK, or CANCELLED when the plugin had to cancel it
    error: str = ""  # why STOP could not be sent, if it could not

    @property
    def ack_ms(self) -> float | None:
        """Stop requested -> the worker's answer to STOP arrived."""
        return None if self.acked_at is None else (self.acked_at - self.requested_at) * 1000

    @property
    def stream_end_ms(self) -> float | None:
        """Stop requested -> the worker had ended the stream (its trailing status arrived)."""
        return None if self.ended_at is None else (self.ended_at - self.requested_at) * 1000

    @property
    def silent_ms(self) -> float | None:
        """Stop requested -> the worker emitted nothing more: its STOP answer when no frame
        followed it (the worker's pacer may still sleep out the current frame slot before it
        closes the stream), else the end of the stream (also when it had to be cancelled)."""
        if self.frames_after_stop == 0 and self.acked_at is not None and self.status == "OK":
            return self.ack_ms
        return self.stream_end_ms
