"""Voice activity detection: onset/offset events from a 16 kHz int16 stream.

`create_vad("silero" | "webrtc", params)` is the one entry point the orchestrator uses; the
engines are imported only when asked for, so a broken optional engine never breaks the other.
"""

from __future__ import annotations

from duplexd.vad.base import VADEvent, VADParams, VoiceActivityDetector

__all__ = ["ENGINES", "VADEvent", "VADParams", "VoiceActivityDetector", "create_vad"]

ENGINES = ("silero", "webrtc")


def create_vad(engine: str, params: VADParams | None = None) -> VoiceActivityDetector:
    """A fresh detector for one audio stream (detectors keep per-stream state)."""
    if engine == "silero":
        from duplexd.vad.silero import SileroVAD

        return SileroVAD(params)
    if engine == "webrtc":
        from duplexd.vad.webrtc import WebRTCVAD

        return WebRTCVAD(params)
    raise ValueError(f"unknown VAD engine {engine!r}: choose one of {', '.join(ENGINES)}")
