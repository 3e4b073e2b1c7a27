"""Spark-TTS 0.5B: a Qwen2.5-0.5B LM that writes BiCodec tokens, decoded to 16 kHz speech.

The model folder is the upstream release (`SparkAudio/Spark-TTS-0.5B` on Hugging Face, which
`duplexctl models pull spark-tts-0.5b` fetches): ``config.yaml``, ``LLM/``, ``BiCodec/`` and
``wav2vec2-large-xlsr-53/``. It loads through spark-tts-lib's own `SparkTTS`, so a real
checkpoint and the tiny test model (`duplexd devkit tiny-model spark`) take the same path.

How Spark speaks: the LM reads the text and a voice prompt and samples *semantic* tokens (50 per
second of speech); BiCodec turns them, together with 32 *global* tokens that fix the speaker,
into a waveform. The global tokens come from one of two kinds of voice, and every API accepts
both by name:

- *zero-shot voices*: a reference clip ``<voicepack>/voices/<name>.wav`` (and, optionally, its
  transcript ``<name>.txt``). BiCodec's tokenizer (wav2vec2 features + a speaker encoder) turns
  the clip into the global tokens, and, with a transcript, the clip's own semantic tokens, which
  the LM then continues after the transcript (upstream's better-cloning mode). This is done on
  first use and kept in memory per clip; a newer clip or transcript is tokenized again. Clips
  are listed on each request, so dropping one in needs no reload, and a clip shadows a control
  voice of the same name.
- *control voices* ``female`` and ``male``: no reference; the LM writes the 32 global tokens
  itself from gender, pitch and speed labels (upstream's "voice creation" mode; pitch and speed
  come from the catalog `options:`).

The default voice is the catalog's `default_voice`, else the first clip (an operator who put a
clip there wants it), else ``female``.

Why not `SparkTTS.inference`: it re-tokenizes the reference clip on every call (a pass of
the 0.3 B-parameter wav2vec2 over the whole clip) and always allows 3000 new tokens (60 s of
audio), so an LM that fails to stop would run that long on every clause. Here the prompt is
built the same way from the cached tokens and the LM's output is read back the same way, with
``max_new_tokens`` from the catalog options, else the LM's ``generation_config.json``, else
1000 (20 s of speech, far more than one clause).

A trained LM writes exactly 32 global tokens for a control voice; upstream crashes on any
other count. Here more are cut to the first 32 and fewer fail the request with a clear error,
so the control voices also speak with the tiny random test model (which writes global and
semantic tokens mixed, about a third of them global).

No streaming: Spark generates a whole utterance per `generate` call, so each text unit the
worker's chunker hands over (a clause) becomes one chunk; first audio costs one clause.

Threads: on CPU the base class sets `torch.set_num_threads(engine_threads)` before loading
(torch's default of one thread per core per synthesis oversubscribes a small box).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from duplexd.audio.pcm import Float32Array, Int16Array
from duplexd.errors import AdapterError, InvalidArgument, ModelLoadError
from duplexd.tts.adapters.base import TTSAdapter
from duplexd.tts.catalog import ModelMeta

__all__ = ["CONTROL_VOICES", "SparkAdapter"]

# the upstream release layout (the HF folders' weight files may be .bin or .safetensors, so
# those are left to `from_pretrained`, whose own error names what it did not find)
_FILES = (
    "config.yaml",
    "LLM/config.json",
    "BiCodec/config.yaml",
    "BiCodec/model.safetensors",
    "wav2vec2-large-xlsr-53/config.json",
    "wav2vec2-large-xlsr-53/preprocessor_config.json",
)
CONTROL_VOICES = ("female", "male")  # upstream's GENDER_MAP
_LEVELS = ("very_low", "low", "moderate", "high", "very_high")  # upstream's LEVELS_MAP
# upstream's `inference` defaults; catalog `options:` may override them
_SAMPLING: dict[str, float | int] = {"temperature": 0.8, "top_k": 50, "top_p": 0.95}
_OPTIONS = ("max_new_tokens", "pitch", "speed", *_SAMPLING)
_DEFAULT_MAX_NEW_TOKENS = 1000
_SEMANTIC = re.compile(r"bicodec_semantic_(\d+)")
_GLOBAL = re.compile(r"bicodec_global_(\d+)")


@dataclass(frozen=True)
class _Clone:
    """A zero-shot voice's prompt parts, tokenized once per clip (and transcript) version."""

    stamp: tuple[int, int | None]  # mtime_ns of the clip and of its transcript (None: none)
    global_ids: Any  # LongTensor (1, 32) on the model's device, as BiCodec decodes it
    global_tokens: str  # the same ids as LM tokens
    transcript: str | None
    semantic_tokens: str  # the clip's speech as LM tokens; used only with a transcript


class SparkAdapter(TTSAdapter):
    family = "spark"
    uses_torch: ClassVar[bool] = True
    engine_modules: ClassVar[tuple[str, ...]] = ("torch", "spark_tts_lib")
    engine_extra: ClassVar[str] = "spark"

    def __init__(self, meta: ModelMeta, *, device: str = "cpu", threads: int = 1) -> None:
        super().__init__(meta, device=device, threads=threads)
        self._tts: Any = None
        self._clones: dict[str, _Clone] = {}
        self._clone_lock = threading.Lock()
        self._sampling: dict[str, float | int] = dict(_SAMPLING)
        self._max_new_tokens: int | None = None
        self._pitch = self._speed = "moderate"
        self._global_count = 32
        self._native_sr = meta.native_sr

    # -- lifecycle -----------------------------------------------------------------------

    def _load(self) -> None:
        import torch
        from omegaconf import OmegaConf
        from spark_tts_lib import SparkTTS

        folder = self.release_folder(_FILES, "Spark-TTS")
        self._set_options()
        try:
            codec: Any = OmegaConf.load(folder / "BiCodec" / "config.yaml")
            self._global_count = int(
                codec["audio_tokenizer"]["speaker_encoder"].get("token_num", 32)
            )
            tts = SparkTTS(folder, device=torch.device(self.device))
        except Exception as exc:
            raise ModelLoadError(
                f"{folder} does not hold a loadable Spark-TTS model: {type(exc).__name__}: {exc}",
                hint=f"re-pull it: `duplexctl models pull {self.meta.model_id}`",
            ) from exc
        if self._max_new_tokens is None:
            self._max_new_tokens = int(
                tts.model.generation_config.max_new_tokens or _DEFAULT_MAX_NEW_TOKENS
            )
        self._native_sr = int(tts.sample_rate)
        self._tts = tts

    def _set_options(self) -> None:
        """Catalog `options:` on top of upstream's sampling defaults; typos fail the load."""
        options = dict(self.meta.options)
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ModelLoadError(
                f"{self.meta.model_id!r}: unknown Spark options {', '.join(unknown)}",
                hint=f"options: {', '.join(_OPTIONS)}",
            )
        if "max_new_tokens" in options:
            self._max_new_tokens = int(options.pop("max_new_tokens"))
            if self._max_new_tokens < 1:
                raise ModelLoadError(f"{self.meta.model_id!r}: options.max_new_tokens must be ≥ 1")
        for key in ("pitch", "speed"):
            level = str(options.pop(key, "moderate"))
            if level not in _LEVELS:
                raise ModelLoadError(
                    f"{self.meta.model_id!r}: options.{key} must be one of {', '.join(_LEVELS)}"
                )
            setattr(self, f"_{key}", level)
        self._sampling.update(options)

    def _close(self) -> None:
        self._tts = None
        self._clones.clear()

    @property
    def sample_rate(self) -> int:
        """config.yaml's sample_rate once loaded (16 kHz for Spark-TTS-0.5B)."""
        return self._native_sr

    # -- voices --------------------------------------------------------------------------

    @property
    def voices(self) -> list[str]:
        """Zero-shot voices (clips in `voices_dir`), then the control voices, each once."""
        return list(dict.fromkeys([*self._clips(), *CONTROL_VOICES]))

    @property
    def default_voice(self) -> str:
        """The catalog's `default_voice`, else the first clip, else ``female``."""
        return self.meta.default_voice or self.voices[0]

    def check_request(self, voice: str | None, language: str | None) -> None:
        """Cheap checks only (this runs on the event loop): names, not tokens."""
        voices = self.voices
        wanted = voice or self.default_voice
        if wanted not in voices:
            raise InvalidArgument(
                f"model {self.meta.model_id!r} has no voice {wanted!r}",
                hint=f"voices: {', '.join(voices)}; add one as {self.voices_dir}/<name>.wav",
            )
        super().check_request(None, language)  # the catalog's languages

    def _clone(self, name: str) -> _Clone:
        clip = self.voices_dir / f"{name}.wav"
        transcript = clip.with_suffix(".txt")
        try:
            stamp = (clip.stat().st_mtime_ns, _mtime(transcript))
        except FileNotFoundError:
            raise InvalidArgument(f"voice {name!r}: its clip {clip} was removed") from None
        cached = self._clones.get(name)
        if cached is not None and cached.stamp == stamp:
            return cached
        # one tokenization per clip even when several sessions ask at once
        with self._clone_lock:
            cached = self._clones.get(name)
            if cached is None or cached.stamp != stamp:
                cached = self._tokenize(clip, transcript, stamp)
                self._clones[name] = cached
        return cached

    def _tokenize(self, clip: Path, transcript: Path, stamp: tuple[int, int | None]) -> _Clone:
        """What upstream's `process_prompt` does with a clip, once instead of per call."""
        try:
            global_ids, semantic_ids = self._tts.audio_tokenizer.tokenize(clip)
        except Exception as exc:
            raise InvalidArgument(
                f"reference clip {clip} cannot clone a voice: {type(exc).__name__}: {exc}",
                hint="use a mono WAV of 3-15 s of one speaker's clean speech",
            ) from exc
        text = transcript.read_text().strip() if stamp[1] is not None else ""
        return _Clone(
            stamp=stamp,
            global_ids=global_ids.squeeze(0),
            global_tokens="".join(f"<|bicodec_global_{i}|>" for i in global_ids.flatten().tolist()),
            transcript=text or None,
            semantic_tokens="".join(
                f"<|bicodec_semantic_{i}|>" for i in semantic_ids.flatten().tolist()
            ),
        )

    # -- generation ----------------------------------------------------------------------

    def _generate(
        self, text: str, voice: str | None, language: str | None
    ) -> Iterator[Float32Array | Int16Array]:
        import torch

        # the block ends before the yield: the session may resume this generator on another
        # executor thread, and inference mode is per thread
        with torch.inference_mode():
            audio = self._speak(text, voice or self.default_voice)
        yield audio

    def _speak(self, text: str, name: str) -> Float32Array:
        import torch
        from spark_tts_lib.utils.token_parser import TASK_TOKEN_MAP

        tts = self._tts
        global_ids: Any = None
        if name in self._clips():
            clone = self._clone(name)
            global_ids = clone.global_ids
            prompt = "".join(
                [
                    TASK_TOKEN_MAP["tts"],
                    "<|start_content|>",
                    clone.transcript or "",
                    text,
                    "<|end_content|>",
                    "<|start_global_token|>",
                    clone.global_tokens,
                    "<|end_global_token|>",
                ]
            )
            if clone.transcript:
                prompt += "<|start_semantic_token|>" + clone.semantic_tokens
        elif name in CONTROL_VOICES:
            prompt = tts.process_prompt_control(name, self._pitch, self._speed, text)
        else:  # check_request vetted the name; its clip was removed since
            raise InvalidArgument(
                f"model {self.meta.model_id!r} has no voice {name!r}",
                hint=f"voices: {', '.join(self.voices)}",
            )
        inputs = tts.tokenizer([prompt], return_tensors="pt")
        input_ids = inputs["input_ids"].to(tts.device)
        generated = tts.model.generate(
            input_ids=input_ids,
            attention_mask=inputs["attention_mask"].to(tts.device),
            max_new_tokens=self._max_new_tokens,
            do_sample=True,
            pad_token_id=tts.tokenizer.pad_token_id,
            **self._sampling,
        )
        # codec tokens are ordinary added tokens: they survive skip_special_tokens
        out = tts.tokenizer.decode(generated[0, input_ids.shape[1] :], skip_special_tokens=True)
        semantic = [int(i) for i in _SEMANTIC.findall(out)]
        if not semantic:
            raise AdapterError(
                f"{self.meta.model_id}: the LM wrote no speech tokens for {text[:40]!r}"
            )
        if global_ids is None:
            written = [int(i) for i in _GLOBAL.findall(out)]
            if len(written) < self._global_count:
                raise AdapterError(
                    f"{self.meta.model_id}: control voice {name!r}: the LM wrote "
                    f"{len(written)} of the {self._global_count} speaker tokens it needs",
                    hint="untrained or damaged weights do this; a cloned voice does not need "
                    "them (add a clip to the voices folder)",
                )
            global_ids = torch.tensor([written[: self._global_count]], dtype=torch.long)
        wav = tts.audio_tokenizer.detokenize(
            global_ids.to(tts.device),
            torch.tensor([semantic], dtype=torch.long, device=tts.device),
        )
        return np.asarray(wav, dtype=np.float32).reshape(-1)


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
