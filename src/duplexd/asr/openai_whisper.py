"""Whisper on PyTorch (openai-whisper), for checkpoints faster-whisper cannot read.

openai-whisper pulls in torch, so it lives in the optional `ml` extra and is imported only
when this engine is built. It loads a local checkpoint file only: `whisper.load_model` would
download a model given by name, and nothing in duplex may fetch weights at run time.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from duplexd.asr.base import ASREngine, Decoded
from duplexd.audio.pcm import Float32Array
from duplexd.errors import FailedPrecondition, ModelLoadError, ModelNotFound

__all__ = ["MISSING_PACKAGE", "OpenAIWhisperASR"]

MISSING_PACKAGE = (
    "openai-whisper is not installed: uv sync --extra ml (or pip install 'duplex[ml]')"
)


def _import_whisper() -> ModuleType:
    try:
        import whisper
    except ImportError:
        raise FailedPrecondition(MISSING_PACKAGE) from None
    module: ModuleType = whisper
    return module


class OpenAIWhisperASR(ASREngine):
    """A Whisper checkpoint (.pt) run by openai-whisper; fp16 on GPUs, fp32 on CPU."""

    def __init__(self, checkpoint: str, device: str = "cpu", language: str | None = "en") -> None:
        whisper = _import_whisper()
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise ModelNotFound(f"Whisper checkpoint {path} does not exist (give a .pt file)")
        self.checkpoint = path
        self.device = device
        self.language = language
        try:
            self._model: Any = whisper.load_model(str(path), device=device)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelLoadError(f"openai-whisper could not load {path}: {exc}") from exc

    @property
    def name(self) -> str:
        return f"openai-whisper:{self.checkpoint.stem}"

    def _decode(self, audio: Float32Array, prompt: str | None) -> Decoded:
        result = self._model.transcribe(
            audio,
            language=self.language,
            fp16=self.device != "cpu",
            temperature=0.0,
            initial_prompt=prompt,
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        return Decoded(str(result["text"]), result.get("language") or self.language)
