"""Coqui XTTS-v2: multilingual, zero-shot voice cloning, streamed chunk by chunk.

The model folder is the upstream release (`coqui/XTTS-v2` on Hugging Face, which
`duplexctl models pull xtts-v2-en` fetches): ``config.json``, ``model.pth``, ``vocab.json``
and ``speakers_xtts.pth``. It loads through coqui's own `Xtts.load_checkpoint`, so a real
checkpoint and the tiny test model (`duplexd devkit tiny-model xtts`) take the same path.

Voices come in two kinds, and every API accepts both by name:

- *built-in speakers* from ``speakers_xtts.pth`` (name -> GPT conditioning latents + speaker
  embedding, computed upstream);
- *zero-shot voices*: a reference clip ``<voicepack>/voices/<name>.wav``. Its latents are
  computed on first use, as coqui's `get_conditioning_latents` does (a fraction of a second on
  a GPU, seconds on a CPU), then kept in memory and in ``<name>.latents.pt`` beside the clip,
  so later loads skip the work. A changed clip (size or mtime), or a cache made by other
  weights, is recomputed. A clip shadows a built-in speaker of the same name: the operator put
  it there on purpose. Clips are listed on each request, so dropping one in needs no reload.

Streaming: `inference_stream` yields audio every `stream_chunk_size` GPT tokens (≈ 46 ms of
audio each; option ``stream_chunk_size``, default 20 as upstream). Each chunk is handed on as
soon as it exists, so first audio costs one chunk of GPT steps plus one decoder pass, not the
whole unit.

Threads: on CPU the base class sets `torch.set_num_threads(engine_threads)` before loading.
It is needed: by default torch runs one thread per core in every synthesis, so two sessions (or
an XTTS session next to Piper's ONNX sessions) oversubscribe the cores and all of them fall
behind real time (here, on 2 busy cores, one decode took 3x longer on 2 torch threads than on
1). On a GPU it is left alone: there the CPU side of a model is one thread feeding kernels.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import structlog

from duplexd.audio.pcm import Float32Array, Int16Array
from duplexd.errors import InvalidArgument, ModelLoadError
from duplexd.tts.adapters.base import TTSAdapter
from duplexd.tts.catalog import ModelMeta

__all__ = ["XttsAdapter"]

log = structlog.get_logger(__name__)

# the upstream release layout
_FILES = ("config.json", "model.pth", "vocab.json", "speakers_xtts.pth")
_CACHE_SUFFIX = ".latents.pt"
_CACHE_FORMAT = 1
_CLONE_SR = 22050  # coqui resamples reference clips to this before computing latents
# sampling settings: config.json's values (as coqui's own `synthesize` uses them), which catalog
# `options:` may override, plus `speed` (1.0 unless set)
_CONFIG_SAMPLING = ("temperature", "length_penalty", "repetition_penalty", "top_k", "top_p")
_SAMPLING = (*_CONFIG_SAMPLING, "speed")

Latents = tuple[Any, Any]  # (gpt_cond_latent (1, 32, D), speaker_embedding (1, 512, 1))


class XttsAdapter(TTSAdapter):
    family = "xtts"
    uses_torch: ClassVar[bool] = True
    engine_modules = ("torch", "TTS.tts.models.xtts")
    engine_extra = "xtts"

    model: Any = None
    """The loaded coqui `Xtts`, public so a benchmark can call `inference_stream` directly."""

    def __init__(self, meta: ModelMeta, *, device: str = "cpu", threads: int = 1) -> None:
        super().__init__(meta, device=device, threads=threads)
        self._speakers: dict[str, Latents] = {}
        # zero-shot voice -> (latents, `_file_stamp` of the clip they were computed from)
        self._cloned: dict[str, tuple[Latents, str]] = {}
        self._clone_lock = threading.Lock()
        self._languages: tuple[str, ...] = ()
        self._sampling: dict[str, Any] = {}
        self._chunk_tokens = 20
        self._fingerprint = ""
        self._native_sr = meta.native_sr

    # -- lifecycle -----------------------------------------------------------------------

    def _load(self) -> None:
        # files first: a missing model is reported at once, not after seconds of torch imports
        folder = self.release_folder(_FILES, "XTTS-v2")
        from TTS.tts.configs.xtts_config import XttsConfig
        from TTS.tts.models.xtts import Xtts

        config = XttsConfig()
        try:
            config.load_json(str(folder / "config.json"))
        except Exception as exc:
            raise ModelLoadError(f"{folder / 'config.json'} is not an XTTS config: {exc}") from exc
        self._sampling = {key: getattr(config, key) for key in _CONFIG_SAMPLING}
        self._set_options()
        model = Xtts(config)
        try:
            model.load_checkpoint(
                config,
                checkpoint_dir=str(folder),
                vocab_path=str(folder / "vocab.json"),
                speaker_file_path=str(folder / "speakers_xtts.pth"),
                use_deepspeed=False,
                eval=True,
            )
        except Exception as exc:
            raise ModelLoadError(
                f"{folder} does not hold a loadable XTTS-v2 checkpoint: "
                f"{type(exc).__name__}: {exc}",
                hint=f"re-pull it: `duplexctl models pull {self.meta.model_id}`",
            ) from exc
        self.model = model.to(self.device)
        speakers = model.speaker_manager.speakers if model.speaker_manager else {}
        self._speakers = {
            name: (
                latents["gpt_cond_latent"].to(self.device),
                latents["speaker_embedding"].to(self.device),
            )
            for name, latents in speakers.items()
        }
        self._languages = tuple(
            lang
            for lang in config.languages
            if not self.meta.languages or _match_language(lang, self.meta.languages)
        )
        if not self._languages:
            raise ModelLoadError(
                f"{self.meta.model_id!r}: none of the catalog's languages "
                f"({', '.join(self.meta.languages)}) is in {folder / 'config.json'}"
            )
        self._native_sr = int(config.audio.output_sample_rate)
        self._fingerprint = _file_stamp(folder / "model.pth")

    def _set_options(self) -> None:
        """Catalog `options:` on top of config.json's sampling settings; typos fail the load."""
        options = dict(self.meta.options)
        self._chunk_tokens = int(options.pop("stream_chunk_size", 20))
        if self._chunk_tokens < 1:
            raise ModelLoadError(f"{self.meta.model_id!r}: options.stream_chunk_size must be ≥ 1")
        unknown = sorted(set(options) - set(_SAMPLING))
        if unknown:
            raise ModelLoadError(
                f"{self.meta.model_id!r}: unknown XTTS options {', '.join(unknown)}",
                hint=f"options: stream_chunk_size, {', '.join(_SAMPLING)}",
            )
        self._sampling.update(options)

    def _close(self) -> None:
        self.model = None
        self._speakers.clear()
        self._cloned.clear()

    @property
    def sample_rate(self) -> int:
        """config.audio.output_sample_rate once loaded (24 kHz for XTTS-v2)."""
        return self._native_sr

    # -- voices and languages ------------------------------------------------------------

    @property
    def voices(self) -> list[str]:
        """Built-in speakers, then zero-shot voices (clips in `voices_dir`), each once."""
        return list(dict.fromkeys([*self._speakers, *self._clips()]))

    @property
    def default_voice(self) -> str | None:
        """The catalog's `default_voice`, else the first built-in speaker, else the first clip."""
        if self.meta.default_voice:
            return self.meta.default_voice
        voices = self.voices
        return voices[0] if voices else None

    @property
    def languages(self) -> tuple[str, ...]:
        """What config.json lists, narrowed to the catalog's `languages` when it names any."""
        return self._languages

    def check_request(self, voice: str | None, language: str | None) -> None:
        """Cheap checks only (this runs on the event loop): names, not latents."""
        voices = self.voices
        wanted = voice or self.default_voice
        if wanted is None or wanted not in voices:
            raise InvalidArgument(
                f"model {self.meta.model_id!r} has no voice {wanted!r}",
                hint=f"voices: {', '.join(voices) or 'none'}; add one as "
                f"{self.voices_dir}/<name>.wav",
            )
        if language and not _match_language(language, self.languages):
            raise InvalidArgument(
                f"model {self.meta.model_id!r} does not speak {language!r}",
                hint=f"languages: {', '.join(self.languages)}",
            )

    def conditioning(self, voice: str | None) -> Latents:
        """(gpt_cond_latent, speaker_embedding) on the model's device for `voice` (None: the
        default voice); a zero-shot voice's latents are computed or read from cache here."""
        name = voice or self.default_voice
        if name is not None and name in self._clips():
            return self._clone(name, self.voices_dir / f"{name}.wav")
        if name is not None and name in self._speakers:
            return self._speakers[name]
        raise InvalidArgument(
            f"model {self.meta.model_id!r} has no voice {name!r}",
            hint=f"voices: {', '.join(self.voices) or 'none'}",
        )

    def _clone(self, name: str, clip: Path) -> Latents:
        stamp = _file_stamp(clip)
        cached = self._cloned.get(name)
        if cached is not None and cached[1] == stamp:
            return cached[0]
        # one computation per clip even when several sessions ask at once
        with self._clone_lock:
            cached = self._cloned.get(name)
            if cached is None or cached[1] != stamp:
                latents = self._read_cache(clip, stamp) or self._compute(clip, stamp)
                cached = (latents, stamp)
                self._cloned[name] = cached
        return cached[0]

    def _cache_key(self, clip_stamp: str) -> dict[str, Any]:
        """What a cache file must match to be used: its format, these weights, this clip."""
        return {"format": _CACHE_FORMAT, "weights": self._fingerprint, "clip": clip_stamp}

    def _read_cache(self, clip: Path, stamp: str) -> Latents | None:
        import torch

        cache = clip.with_suffix(_CACHE_SUFFIX)
        try:
            data = torch.load(cache, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return None
        except Exception as exc:  # a torn or foreign file: recompute and overwrite it
            log.warning("xtts latents cache unreadable", path=str(cache), error=str(exc))
            return None
        key = self._cache_key(stamp)
        if not isinstance(data, dict) or any(data.get(k) != v for k, v in key.items()):
            return None  # another clip's, or other weights' (their latents mean nothing here)
        return data["gpt_cond_latent"].to(self.device), data["speaker_embedding"].to(self.device)

    def _compute(self, clip: Path, stamp: str) -> Latents:
        """What coqui's `get_conditioning_latents` does, except reading the clip.

        Coqui reads it with `torchaudio.load`, which since torchaudio 2.9 goes through
        torchcodec and needs FFmpeg's shared libraries installed system-wide: absent on many
        servers (ours included), where every clone would fail. PyAV, a core dependency,
        carries its own FFmpeg.
        """
        import torch

        config = self.model.config
        try:
            samples = _read_clip(clip, _CLONE_SR)[: _CLONE_SR * config.max_ref_len]
            audio = torch.from_numpy(samples).clamp(-1.0, 1.0).unsqueeze(0).to(self.device)
            if config.sound_norm_refs:
                audio = audio / audio.abs().max() * 0.75
            speaker_embedding = self.model.get_speaker_embedding(audio, _CLONE_SR)
            gpt_cond_latent = self.model.get_gpt_cond_latents(
                audio,
                _CLONE_SR,
                length=config.gpt_cond_len,
                chunk_length=config.gpt_cond_chunk_len,
            )
        except Exception as exc:
            raise InvalidArgument(
                f"reference clip {clip} cannot clone a voice: {type(exc).__name__}: {exc}",
                hint="use a WAV of 6-30 s of one speaker's clean speech",
            ) from exc
        cache = clip.with_suffix(_CACHE_SUFFIX)
        partial = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        try:
            torch.save(
                {
                    **self._cache_key(stamp),
                    "gpt_cond_latent": gpt_cond_latent.cpu(),
                    "speaker_embedding": speaker_embedding.cpu(),
                },
                partial,
            )
            partial.replace(cache)  # readers never see half a file
        except OSError as exc:  # a read-only voicepack still serves, from memory
            log.warning("xtts latents cache not written", path=str(cache), error=str(exc))
            partial.unlink(missing_ok=True)
        return gpt_cond_latent, speaker_embedding

    # -- generation ----------------------------------------------------------------------

    def _generate(
        self, text: str, voice: str | None, language: str | None
    ) -> Iterator[Float32Array | Int16Array]:
        import torch

        gpt_cond_latent, speaker_embedding = self.conditioning(voice)
        # `inference_mode` applied to a generator function enters the mode around each step;
        # a `with` block would not do: the session advances this generator from whichever
        # executor thread is free, and the mode is per thread.
        stream = torch.inference_mode()(self._stream)
        # check_request vetted the language; None means the model's first (English)
        lang = _match_language(language, self.languages) if language else None
        yield from stream(text, lang or self.languages[0], gpt_cond_latent, speaker_embedding)

    def _stream(
        self, text: str, language: str, gpt_cond_latent: Any, speaker_embedding: Any
    ) -> Iterator[Float32Array]:
        for chunk in self.model.inference_stream(
            text,
            language,
            gpt_cond_latent,
            speaker_embedding,
            stream_chunk_size=self._chunk_tokens,
            enable_text_splitting=False,  # the session's chunker already cut the text
            **self._sampling,
        ):
            yield np.asarray(chunk.float().cpu().numpy(), dtype=np.float32)


def _file_stamp(path: Path) -> str:
    """Size and mtime: a file that changed (replaced, re-recorded, re-pulled) gets a new one."""
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _read_clip(clip: Path, rate: int) -> Float32Array:
    """A reference clip as mono float32 at `rate` (PyAV decodes and resamples it)."""
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    parts: list[Float32Array] = []
    with av.open(str(clip)) as container:
        for frame in container.decode(audio=0):
            parts += [out.to_ndarray()[0] for out in resampler.resample(frame)]
    parts += [out.to_ndarray()[0] for out in resampler.resample(None)]
    if not parts:
        raise ValueError("no audio in it")
    return np.concatenate(parts).astype(np.float32, copy=False)


def _match_language(language: str, supported: tuple[str, ...]) -> str | None:
    """The entry of `supported` that `language` names: exactly ("zh-cn"), else by its base
    code ("en-US" -> "en", "zh" -> "zh-cn"); None when there is none."""
    wanted = language.lower().replace("_", "-")
    for lang in supported:
        if wanted == lang.lower():
            return lang
    base = wanted.split("-")[0]
    return next((lang for lang in supported if lang.lower().split("-")[0] == base), None)
