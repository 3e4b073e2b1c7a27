"""The duplex side of the framework plugins: find a worker, speak through it, stop it.

Shared by `duplex_plugins.livekit` and `duplex_plugins.pipecat`; it imports no framework.

- `resolve_worker` turns what a user wrote into a worker address: ``HOST:PORT``; a daemon name
  from `duplexctl up` (or one registered in the Redis fleet); the fleet itself (the least busy
  worker, preferring one where the model is resident); else the local default.
- `WorkerLink` is one plugin instance's connection: the gRPC client, created on first use, and
  a few idle worker sessions kept per (model, voice, language), so a turn does not pay a
  StartSession and a model stays leased while the plugin uses it.
- `Speech` is one utterance: text in (all at once or as an LLM streams it), the worker's 20 ms
  frames out. A reader task owns the gRPC stream, so a framework cancelling its consumer
  (LiveKit's ``aclose()``, Pipecat's interruption) never cancels the RPC under the worker:
  `Speech.stop` sends STOP, waits for the worker to end the stream, and returns a
  `StopReport` with the worker's own figures (the last frame it had emitted when STOP took
  effect, and every frame it emitted after).
"""

from __future__ import annotations

from duplex_plugins._errors import ErrorKind, error_kind, http_status
from duplex_plugins._resolve import (
    DEFAULT_WORKER,
    ResolvedWorker,
    pick_from_fleet,
    redis_from_env,
    resolve_worker,
)
from duplex_plugins._stream import Speech, WorkerLink
from duplex_plugins._types import (
    FRAME_MS,
    SAMPLE_RATE,
    SpeechOptions,
    SpeechTiming,
    StopReport,
    WorkerModel,
)

__all__ = [
    "DEFAULT_WORKER",
    "FRAME_MS",
    "SAMPLE_RATE",
    "ErrorKind",
    "ResolvedWorker",
    "Speech",
    "SpeechOptions",
    "SpeechTiming",
    "StopReport",
    "WorkerLink",
    "WorkerModel",
    "error_kind",
    "http_status",
    "pick_from_fleet",
    "redis_from_env",
    "resolve_worker",
]
