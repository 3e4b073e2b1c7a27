"""The adapter template: the base owns lifecycle, memory accounting, resampling, framing and
error mapping; an engine writes `_load`, `_generate` and (if it holds more than Python objects)
`_close`.

Generation is blocking and runs on a worker thread. The session pulls one *batch* of frames per
engine chunk (`frame_batches`), so engines that stream (XTTS) and engines that return a whole
sentence (Piper) go through one path, and a paused or stopped session simply stops pulling.
"""

from __future__ import annotations

import ctypes
import gc
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np

from duplexd.audio.framing import Repacketizer
from duplexd.audio.pcm import Float32Array, Int16Array
from duplexd.audio.resample import StreamResampler
from duplexd.errors import (
    AdapterError,
    DuplexError,
    FailedPrecondition,
    InvalidArgument,
    ModelLoadError,
    WeightsMissing,
)
from duplexd.tts.catalog import ModelMeta
from duplexd.tts.memory import process_rss_bytes

__all__ = ["FrameBatch", "TTSAdapter", "require_extra"]

FrameBatch = list[bytes]


class TTSAdapter(ABC):
    """One loaded model of one engine family."""

    family: ClassVar[str]
    # torch engines: `device: auto` means a CUDA GPU when torch sees one (duplexd.tts.devices)
    uses_torch: ClassVar[bool] = False
    # The engine's Python modules and the install extra that provides them: imported before the
    # load's memory reading starts, so a process's one-time library import (torch: ~0.5-0.8 GB)
    # is not booked as the model's memory (which unloading could never give back).
    engine_modules: ClassVar[tuple[str, ...]] = ()
    engine_extra: ClassVar[str] = ""
    engine_hint: ClassVar[str | None] = None  # how to get the engine, if not a pip extra

    @classmethod
    def check_engine(cls) -> None:
        """Cheap (no import): refuse a load whose engine package is not installed, before the
        Model Manager's memory pre-check could answer with a less useful refusal."""
        from duplexd.tts.readiness import engine_blocker

        blocker = engine_blocker(cls)
        if blocker is not None:
            raise blocker.error

    def __init__(self, meta: ModelMeta, *, device: str = "cpu", threads: int = 1) -> None:
        self.meta = meta
        self.device = device
        self.threads = threads
        self._memory_bytes = 0
        self._loaded = False
        self.last_rtf: float | None = None

    # -- lifecycle (blocking; the Model Manager runs these off the event loop) -------------

    def load(self) -> None:
        """Load the engine and record how much memory it took."""
        if self.meta.weights:
            self.meta.weights_path()  # missing weights fail before seconds of engine imports
        if self.engine_modules:
            require_extra(
                self.engine_extra or self.family, *self.engine_modules, hint=self.engine_hint
            )
        if self.uses_torch and self.device == "cpu":
            # torch's default is a thread per core in every synthesis: sessions running in
            # parallel would then oversubscribe the CPU. Process-wide, so every torch family
            # sets the same worker-wide engine_threads.
            import torch

            torch.set_num_threads(self.threads)
        # memory the process freed earlier (another test's, an unloaded model's) would be
        # reused first and never show as growth: hand it back to the OS before measuring
        _return_heap_to_os()
        before = process_rss_bytes()
        try:
            self._load()
        except DuplexError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"failed to load {self.meta.model_id!r}: {exc}") from exc
        self._loaded = True
        # RSS delta is what unloading can give back; never report less than zero.
        self._memory_bytes = max(process_rss_bytes() - before, 0)

    def warmup(self, text: str) -> None:
        """Synthesize a hidden utterance so the first real request meets warm caches."""
        for _batch in self.frame_batches(text):
            pass

    def close(self) -> None:
        self._close()
        self._loaded = False
        gc.collect()
        if self.uses_torch and self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()  # hand the freed blocks back to the driver and other models
        _return_heap_to_os()

    @property
    def memory_bytes(self) -> int:
        return self._memory_bytes

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def voices_dir(self) -> Path:
        """Where zero-shot reference clips go: ``<voicepack>/voices/<name>.wav``."""
        return self.meta.base_dir / "voices"

    def _clips(self) -> list[str]:
        """Zero-shot voice names: the clips in `voices_dir` (an absent folder means none)."""
        return sorted(p.stem for p in self.voices_dir.glob("*.wav"))

    @property
    def sample_rate(self) -> int:
        """The engine's native output rate (the base resamples it to 48 kHz)."""
        return self.meta.native_sr

    def release_folder(self, files: tuple[str, ...], release: str) -> Path:
        """The model's weights folder, refused unless every file of the upstream `release`
        layout is there (a half-pulled model names what is missing and the pull command)."""
        folder = self.meta.weights_path()  # WeightsMissing names the path and the pull command
        missing = [name for name in files if not (folder / name).is_file()]
        if missing:
            raise WeightsMissing(
                f"{self.meta.model_id!r}: {folder} is not a complete {release} release "
                f"(missing {', '.join(missing)})",
                hint=f"run `duplexctl models pull {self.meta.model_id}`",
            )
        return folder

    # -- LoRA voices ---------------------------------------------------------------------

    def attach_lora(self, meta: ModelMeta) -> TTSAdapter:
        """Blocking: attach the LoRA voice `meta` to this resident base and return the handle
        sessions lease for it. Its `close()` must detach only that adapter. Families with LoRA
        support (`supports_lora: true`) override this."""
        raise FailedPrecondition(
            f"{meta.model_id!r} is a LoRA voice, but {self.meta.model_id!r} "
            f"(family {self.family}) takes no LoRA adapters"
        )

    # -- generation ---------------------------------------------------------------------

    def check_request(self, voice: str | None, language: str | None) -> None:
        """Reject a voice or language this model cannot speak (INVALID_ARGUMENT)."""
        if voice and self.meta.voices and voice not in self.meta.voices:
            raise InvalidArgument(
                f"model {self.meta.model_id!r} has no voice {voice!r}",
                hint=f"voices: {', '.join(self.meta.voices)}",
            )
        if language and not _language_ok(language, self.meta.languages):
            raise InvalidArgument(
                f"model {self.meta.model_id!r} does not speak {language!r}",
                hint=f"languages: {', '.join(self.meta.languages)}",
            )

    def frame_batches(
        self, text: str, voice: str | None = None, language: str | None = None
    ) -> Iterator[FrameBatch]:
        """Wire frames (48 kHz s16le, 20 ms), one batch per engine chunk; the last is padded."""
        resampler = StreamResampler(self.sample_rate)
        framer = Repacketizer()
        started, audio_s = time.perf_counter(), 0.0
        for chunk in self._guarded(text, voice, language):
            audio_s += len(chunk) / self.sample_rate
            frames = framer.push(resampler.process(chunk))
            if frames:
                yield frames
        tail = framer.push(resampler.flush())
        last = framer.flush()
        if last is not None:
            tail.append(last)
        if tail:
            yield tail
        if audio_s > 0:
            self.last_rtf = (time.perf_counter() - started) / audio_s

    def _guarded(
        self, text: str, voice: str | None, language: str | None
    ) -> Iterator[Float32Array | Int16Array]:
        try:
            for chunk in self._generate(text, voice or self.meta.default_voice, language):
                if chunk.size:
                    yield chunk
        except DuplexError:
            raise
        except Exception as exc:
            raise AdapterError(f"{self.meta.model_id}: synthesis failed: {exc}") from exc

    # -- what an engine implements -------------------------------------------------------

    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def _generate(
        self, text: str, voice: str | None, language: str | None
    ) -> Iterator[Float32Array | Int16Array]:
        """Yield mono audio chunks at `sample_rate` (float32 in [-1, 1] or int16)."""

    def _close(self) -> None:  # noqa: B027  # engines with no native resources need nothing
        """Drop references to the engine so its memory can be returned."""


def _return_heap_to_os() -> None:
    """glibc keeps freed heap in its arenas; an unloaded model's memory only returns to the
    OS (and to other models) after malloc_trim. No-op where that does not exist."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def _language_ok(language: str, supported: tuple[str, ...]) -> bool:
    wanted = language.lower().replace("_", "-")
    return any(wanted == s.lower() or wanted.split("-")[0] == s.lower() for s in supported)


def as_float(samples: Int16Array) -> Float32Array:
    return (samples.astype(np.float32) / 32767.0).astype(np.float32)


def require_extra(extra: str, *modules: str, hint: str | None = None) -> None:
    """Import-check the engine modules of a family; missing ones name the install command.

    Adapter modules import their engines inside `_load`, so `duplexd` starts (and lists the
    family) without the extra; loading a model of it then fails with what to run.
    """
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise _engine_missing(extra, module, str(exc), hint) from exc


def _engine_missing(extra: str, module: str, why: str, hint: str | None) -> ModelLoadError:
    return ModelLoadError(
        f"the {extra!r} family needs the Python package {module!r}: {why}",
        hint=hint
        or f"install the extra: `uv sync --extra {extra}` in a checkout, "
        f"or `pip install 'duplex[{extra}]'`",
    )
