"""Speech recognition: Whisper engines behind one blocking interface, and the streaming layer.

`create_asr(engine, model, **opts)` builds an engine by name; engine modules are imported only
when asked for, so the torch-based one costs nothing unless it is used.
"""

from __future__ import annotations

from typing import Any

from duplexd.asr.base import ASREngine, StreamingTranscriber, Transcript

__all__ = ["ENGINES", "ASREngine", "StreamingTranscriber", "Transcript", "create_asr"]

ENGINES = ("faster-whisper", "openai-whisper")


def create_asr(engine: str, model: str, **opts: Any) -> ASREngine:
    """Load an engine (blocking: seconds for large models; call it from a worker thread).

    `model` is a model name or directory for faster-whisper, a checkpoint path for
    openai-whisper; `opts` go to the engine's constructor.
    """
    if engine == "faster-whisper":
        from duplexd.asr.faster_whisper import FasterWhisperASR

        return FasterWhisperASR(model, **opts)
    if engine == "openai-whisper":
        from duplexd.asr.openai_whisper import OpenAIWhisperASR

        return OpenAIWhisperASR(model, **opts)
    raise ValueError(f"unknown ASR engine {engine!r}: choose one of {', '.join(ENGINES)}")
