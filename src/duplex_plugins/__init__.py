"""duplex's TTS worker inside the voice-agent frameworks people already use.

Import the module of your framework; each needs its extra, and nothing here imports either
framework until you do:

    from duplex_plugins.livekit import TTS                 # pip install 'duplex[livekit]'
    from duplex_plugins.pipecat import DuplexTTSService    # pip install 'duplex[pipecat]'

Both talk to a running ``duplexd worker`` over gRPC: given as ``HOST:PORT``, a daemon name from
``duplexctl up``, or the Redis fleet (``redis_url=`` / ``DUPLEX_REDIS_URL``). See
docs/integrations.md.
"""

from __future__ import annotations

from duplex_plugins._worker import (
    DEFAULT_WORKER,
    ResolvedWorker,
    SpeechOptions,
    SpeechTiming,
    StopReport,
    WorkerModel,
    resolve_worker,
)

__all__ = [
    "DEFAULT_WORKER",
    "ResolvedWorker",
    "SpeechOptions",
    "SpeechTiming",
    "StopReport",
    "WorkerModel",
    "resolve_worker",
]
