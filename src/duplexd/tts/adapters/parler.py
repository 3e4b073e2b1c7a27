"""Parler-TTS: a voice described in words ("a calm female voice, close to the microphone").

parler-tts 0.2.3 pins transformers 4.46.1, and the main environment needs transformers >= 4.57
(XTTS, CSM), so this family runs in its own environment:

    bash scripts/engine-env.sh parler        # .venvs/parler: parler-tts + this checkout
    DUPLEX_WORKER__ADAPTER=parler .venvs/parler/bin/duplexd worker \
        --default-model parler-tts-mini-v1

That worker joins the fleet like any other. This module imports nothing of Parler's at import
time, so every environment lists the family; loading a model where parler-tts is missing
answers with the command above.

The model folder is the upstream release (`parler-tts/parler-tts-mini-v1`): ``config.json``,
``model.safetensors``, ``generation_config.json``, ``preprocessor_config.json`` and the T5
tokenizer files. It loads through `ParlerTTSForConditionalGeneration.from_pretrained` and
`AutoTokenizer`, so a real checkpoint and the tiny test model (`duplexd devkit tiny-model
parler`, run in the engine environment) take the same path.

Voices: Parler has no speakers, it is conditioned on a text *description* of the voice. A voice
here is a named description from the catalog's ``options.descriptions`` (name -> text); the
catalog's ``voices`` lists the names (all descriptions when empty) and ``default_voice`` picks
one. An unknown name is INVALID_ARGUMENT listing the names.

Options (catalog ``options:``; an unknown key fails the load):

- ``descriptions``: the named voice descriptions (required, at least one);
- ``max_new_tokens``: the cap on codec frames per text chunk (86 per second of audio; default
  2580, upstream's 30 s), so a model that never samples its end token still stops;
- ``min_new_tokens``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``: passed to
  `generate` over generation_config.json's values;
- ``suppress_non_audio_tokens`` (default false): forbid the decoder ids above the codebook
  (bos and the unused padding ids 1025-1087). A trained model never samples them; randomly
  initialised test weights do, and the codec cannot decode them.

Generation is per text chunk (the session's chunker cuts clauses): `generate` returns the whole
chunk's waveform, handed on as one piece.

Threads: on CPU the base class sets `torch.set_num_threads(engine_threads)` before loading, as
for every torch family.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from duplexd.audio.pcm import Float32Array, Int16Array
from duplexd.errors import InvalidArgument, ModelLoadError
from duplexd.tts.adapters.base import TTSAdapter
from duplexd.tts.catalog import ModelMeta

__all__ = ["ENGINE_ENV_HINT", "ParlerAdapter"]

ENGINE_ENV_HINT = (
    "parler-tts pins transformers 4.46.1, so it has its own environment: run "
    "`bash scripts/engine-env.sh parler` in a checkout and start the worker from it: "
    "`DUPLEX_WORKER__ADAPTER=parler .venvs/parler/bin/duplexd worker`"
)

# what the upstream release holds (tokenizer files vary by tokenizer class; these two always)
_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")
_CODEBOOK_SIZE_DEFAULT = 1024
_MAX_NEW_TOKENS = 2580  # upstream generation_config max_length: 30 s at 86 frames/s
_GENERATE_OPTIONS = ("min_new_tokens", "do_sample", "temperature", "top_k", "top_p")
_OPTIONS = ("descriptions", "max_new_tokens", "suppress_non_audio_tokens", *_GENERATE_OPTIONS)


class ParlerAdapter(TTSAdapter):
    family = "parler"
    uses_torch: ClassVar[bool] = True
    engine_modules: ClassVar[tuple[str, ...]] = ("torch", "parler_tts")
    engine_hint: ClassVar[str | None] = ENGINE_ENV_HINT

    model: Any = None
    tokenizer: Any = None

    def __init__(self, meta: ModelMeta, *, device: str = "cpu", threads: int = 1) -> None:
        super().__init__(meta, device=device, threads=threads)
        self._descriptions: dict[str, str] = {}
        self._default_voice = ""
        self._generate_kwargs: dict[str, Any] = {}
        self._native_sr = meta.native_sr
        self._description_cache: dict[str, Any] = {}
        self._suppress = False

    # -- lifecycle -----------------------------------------------------------------------

    def _load(self) -> None:
        from parler_tts import ParlerTTSForConditionalGeneration

        # transformers, typed loosely: strict mypy sees its classes as untyped callables
        hf: Any = importlib.import_module("transformers")
        self._set_options()
        folder = self.release_folder(_FILES, "Parler-TTS")
        try:
            model = ParlerTTSForConditionalGeneration.from_pretrained(str(folder))
            tokenizer = hf.AutoTokenizer.from_pretrained(str(folder))
        except Exception as exc:
            raise ModelLoadError(
                f"{folder} does not hold a loadable Parler-TTS model: {type(exc).__name__}: {exc}",
                hint=f"re-pull it: `duplexctl models pull {self.meta.model_id}`",
            ) from exc
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self._native_sr = int(model.config.sampling_rate)
        if self._suppress:
            codebook = int(
                getattr(model.config.audio_encoder, "codebook_size", _CODEBOOK_SIZE_DEFAULT)
            )
            vocab = int(model.config.decoder.vocab_size)
            # ids > codebook_size: bos (codebook + 1) and padding; codebook itself is pad/eos
            self._generate_kwargs["suppress_tokens"] = list(range(codebook + 1, vocab))

    def _set_options(self) -> None:
        """Catalog `options:` -> voices and generate() arguments; typos fail the load."""
        options = dict(self.meta.options)
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ModelLoadError(
                f"{self.meta.model_id!r}: unknown Parler options {', '.join(unknown)}",
                hint=f"options: {', '.join(_OPTIONS)}",
            )
        descriptions = options.get("descriptions") or {}
        if not isinstance(descriptions, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in descriptions.items()
        ):
            raise ModelLoadError(
                f"{self.meta.model_id!r}: options.descriptions must map voice names to "
                "non-empty descriptions",
                hint='e.g. descriptions: {calm: "A calm female voice ..."}',
            )
        names = list(self.meta.voices) or list(descriptions)
        undescribed = [name for name in names if name not in descriptions]
        if not names or undescribed:
            raise ModelLoadError(
                f"{self.meta.model_id!r}: voices without a description: "
                f"{', '.join(undescribed) or '(no voices at all)'}",
                hint="add them under options.descriptions",
            )
        self._descriptions = {name: descriptions[name] for name in names}
        self._default_voice = self.meta.default_voice or names[0]
        if self._default_voice not in self._descriptions:
            raise ModelLoadError(
                f"{self.meta.model_id!r}: default_voice {self._default_voice!r} is not one of "
                f"its voices ({', '.join(names)})"
            )
        max_new = int(options.get("max_new_tokens", _MAX_NEW_TOKENS))
        if max_new < 1:
            raise ModelLoadError(f"{self.meta.model_id!r}: options.max_new_tokens must be ≥ 1")
        self._generate_kwargs = {"max_new_tokens": max_new}
        self._generate_kwargs.update(
            {key: options[key] for key in _GENERATE_OPTIONS if key in options}
        )
        self._suppress = bool(options.get("suppress_non_audio_tokens", False))

    def _close(self) -> None:
        self.model = None
        self.tokenizer = None
        self._description_cache.clear()

    @property
    def sample_rate(self) -> int:
        """The codec's rate from config.json once loaded (44.1 kHz for DAC)."""
        return self._native_sr

    # -- voices --------------------------------------------------------------------------

    @property
    def voices(self) -> list[str]:
        return list(self._descriptions)

    @property
    def default_voice(self) -> str:
        return self._default_voice

    def description(self, voice: str | None) -> str:
        name = voice or self._default_voice
        try:
            return self._descriptions[name]
        except KeyError:
            raise InvalidArgument(
                f"model {self.meta.model_id!r} has no voice {name!r}",
                hint=f"voices: {', '.join(self._descriptions)} (named descriptions in the "
                "catalog's options.descriptions)",
            ) from None

    def check_request(self, voice: str | None, language: str | None) -> None:
        if voice:
            self.description(voice)
        super().check_request(None, language)

    # -- generation ----------------------------------------------------------------------

    def _generate(
        self, text: str, voice: str | None, language: str | None
    ) -> Iterator[Float32Array | Int16Array]:
        import torch

        description = self.description(voice)
        with torch.inference_mode():
            desc = self._tokens(description)
            prompt = self.tokenizer(text, return_tensors="pt").to(self.device)
            audio = self.model.generate(
                input_ids=desc.input_ids,
                attention_mask=desc.attention_mask,
                prompt_input_ids=prompt.input_ids,
                prompt_attention_mask=prompt.attention_mask,
                **self._generate_kwargs,
            )
        samples = audio.float().cpu().numpy().reshape(-1)
        yield np.clip(samples, -1.0, 1.0).astype(np.float32, copy=False)

    def _tokens(self, description: str) -> Any:
        """The tokenized description (one per voice, kept: every chunk reuses it)."""
        cached = self._description_cache.get(description)
        if cached is None:
            cached = self.tokenizer(description, return_tensors="pt").to(self.device)
            self._description_cache[description] = cached
        return cached
