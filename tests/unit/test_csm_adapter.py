"""The CSM adapter and its LoRA voices on tiny random models of the real architecture.

Everything runs through transformers' and peft's real code: `duplexd devkit tiny-model`'s
builders write a 2-layer CSM in `sesame/csm-1b`'s layout and PEFT adapters for it, and the
catalog entries are the repository's own voicepacks pointed at a temporary models dir. A fixed
`seed` option makes sampling repeatable, so "different voice" and "same output" are exact.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("peft")
pytest.importorskip("transformers")

from duplexd.audio.frames import FRAME_BYTES
from duplexd.config import repo_root
from duplexd.devkit.tiny import build_tiny_model
from duplexd.devkit.tiny.csm import build_base, build_lora
from duplexd.errors import (
    FailedPrecondition,
    InvalidArgument,
    ModelLoadError,
    WeightsMissing,
)
from duplexd.tts.adapters.base import TTSAdapter
from duplexd.tts.adapters.csm import CsmAdapter, CsmLoraVoice
from duplexd.tts.catalog import Catalog, ModelMeta

pytestmark = pytest.mark.slow  # torch + transformers + peft imports, model builds

BASE, LORA_A, LORA_B = "sesame-csm-1b", "sesame-unsloth-lora01", "sesame-unsloth-lora02"
TEXT = "Hello there."
SEED = {"seed": 1234}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir as `duplexctl models pull` would fill it: the base and two LoRA voices."""
    root = tmp_path_factory.mktemp("models")
    build_tiny_model("csm", root / BASE)
    build_tiny_model("csm-lora", root / LORA_A, base=root / BASE, seed=1)
    build_tiny_model("csm-lora", root / LORA_B, base=root / BASE, seed=2)
    return root


def _meta(models_dir: Path, model_id: str, **options: Any) -> ModelMeta:
    """The repository's catalog entry, with extra options (a fixed seed, greedy ...)."""
    root = repo_root()
    meta = Catalog.load(None, root / "voicepacks", models_dir).get(model_id)
    return meta.model_copy(update={"options": {**meta.options, **options}})


@pytest.fixture(scope="module")
def base(models_dir: Path) -> Iterator[CsmAdapter]:
    adapter = CsmAdapter(_meta(models_dir, BASE, **SEED), threads=1)
    adapter.load()
    yield adapter
    adapter.close()


@pytest.fixture(scope="module")
def base_audio(base: CsmAdapter) -> np.ndarray:
    """What the base says before any adapter was ever attached."""
    return _audio(base)


@pytest.fixture(scope="module")
def plain_weights(base: CsmAdapter) -> dict[str, int]:
    """Where each of the base's parameters lives before any adapter was attached."""
    return {name: p.data_ptr() for name, p in base._model.named_parameters()}


@pytest.fixture
def voices(
    base: CsmAdapter, base_audio: np.ndarray, plain_weights: dict[str, int], models_dir: Path
) -> Iterator[tuple[CsmLoraVoice, CsmLoraVoice]]:
    a = base.attach_lora(_meta(models_dir, LORA_A))
    b = base.attach_lora(_meta(models_dir, LORA_B))
    yield a, b
    a.close()
    b.close()


def _audio(adapter: TTSAdapter, text: str = TEXT) -> np.ndarray:
    return np.concatenate(list(adapter._generate(text, "0", None)))


# -- the tiny model and the base -------------------------------------------------------


def test_tiny_base_has_the_upstream_layout(models_dir: Path) -> None:
    files = {p.name for p in (models_dir / BASE).iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "preprocessor_config.json",
    } <= files
    lora = {p.name for p in (models_dir / LORA_A).iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= lora


def test_builders_refuse_a_wrong_base_argument(tmp_path: Path, models_dir: Path) -> None:
    with pytest.raises(InvalidArgument, match="needs --base"):
        build_tiny_model("csm-lora", tmp_path / "lora")
    with pytest.raises(InvalidArgument, match="--base is for csm-lora"):
        build_tiny_model("csm", tmp_path / "base", base=models_dir / BASE)


def test_prompt_is_csm_speaker_format(base: CsmAdapter) -> None:
    tokens = base._processor.tokenizer.convert_ids_to_tokens(base._prompt("Hi.", "1")[0])
    assert "".join(tokens) == "<|begin_of_text|>[1]Hi.<|end_of_text|>"


def test_greedy_stream_equals_upstream_generate(base: CsmAdapter, models_dir: Path) -> None:
    """Codes and audio, chunk by chunk, are what transformers' own generate() makes at once:
    the custom loop is CSM's sampling loop, and the chunked Mimi decode has no seams."""
    import torch

    greedy = CsmAdapter(_meta(models_dir, BASE, do_sample=False), threads=1)
    greedy.load()
    try:
        chunks = list(greedy._generate(TEXT, "0", None))
        streamed = np.concatenate(chunks).astype(np.float32)
        frames = len(streamed) // 1920  # Mimi: 80 ms frames at 24 kHz
        with torch.inference_mode():
            reference = greedy._model.generate(
                input_ids=greedy._prompt(TEXT, "0"),
                do_sample=False,
                depth_decoder_do_sample=False,
                max_new_tokens=frames,
                output_audio=True,
            )[0]
    finally:
        greedy.close()
    assert len(chunks) > 2
    assert len(streamed) == len(reference) == frames * 1920
    scale = float(np.abs(reference.numpy()).max())
    np.testing.assert_allclose(streamed, reference.numpy(), atol=1e-5 * scale)


def test_audio_arrives_in_chunks_the_first_after_two_frames(base: CsmAdapter) -> None:
    batches = list(base.frame_batches("Hello there, how are you today?"))
    assert len(batches) > 3
    assert all(len(f) == FRAME_BYTES for batch in batches for f in batch)
    # first_chunk_frames: 2 Mimi frames = 160 ms = 8 wire frames (the resampler may hold one)
    assert len(batches[0]) <= 8
    total_s = sum(len(b) for b in batches) * 0.020
    assert total_s == pytest.approx(min(20.0, 1.0 + 0.15 * 31), abs=0.1)


def test_same_seed_same_audio_and_length_is_bounded(base: CsmAdapter) -> None:
    first, second = _audio(base), _audio(base)
    assert np.array_equal(first, second)
    assert len(first) / 24000 == pytest.approx(1.0 + 0.15 * len(TEXT), abs=0.08)


def test_bad_options_and_corrupt_checkpoints_are_refused(models_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="dtype"):
        CsmAdapter(_meta(models_dir, BASE, dtype="int8")).load()
    broken = tmp_path / BASE
    shutil.copytree(models_dir / BASE, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    meta = _meta(models_dir, BASE).model_copy(update={"weights": str(broken)})
    with pytest.raises(ModelLoadError, match=str(broken)):
        CsmAdapter(meta).load()


# -- LoRA voices -------------------------------------------------------------------------


def test_attach_adds_only_the_adapter(
    base: CsmAdapter, plain_weights: dict[str, int], voices: tuple[CsmLoraVoice, CsmLoraVoice]
) -> None:
    a, b = voices
    assert base.attached() == (LORA_A, LORA_B)
    assert a.loaded and a.sample_rate == 24000 and a.base is base
    # peft wrapped the base's own modules: every base weight is the same storage as before
    assert base._peft.base_model.model is base._model
    now = {
        name.replace(".base_layer.", "."): p.data_ptr()
        for name, p in base._model.named_parameters()
        if ".lora_" not in name
    }
    assert now == plain_weights
    # memory: the adapter's parameters (r=8 on q/v of 6 attention blocks), a sliver of the base
    assert 10_000 < a.memory_bytes == b.memory_bytes < 200_000


def test_each_voice_speaks_differently_and_the_base_is_unchanged(
    base: CsmAdapter, base_audio: np.ndarray, voices: tuple[CsmLoraVoice, CsmLoraVoice]
) -> None:
    a, b = voices
    audio_a, audio_b, audio_base = _audio(a), _audio(b), _audio(base)
    assert np.array_equal(audio_base, base_audio)  # adapters disabled for the base's sessions
    assert not np.allclose(audio_a, base_audio)
    assert not np.allclose(audio_b, base_audio)
    assert not np.allclose(audio_a, audio_b)
    assert np.array_equal(_audio(a), audio_a)  # and each voice is repeatable


def test_interleaved_sessions_each_get_their_own_adapter(
    base: CsmAdapter, base_audio: np.ndarray, voices: tuple[CsmLoraVoice, CsmLoraVoice]
) -> None:
    """Chunks of three sessions alternate on one model, as the executor drives them."""
    a, b = voices
    alone = {"a": _audio(a), "b": _audio(b), "base": base_audio}
    streams = {
        "a": a._generate(TEXT, "0", None),
        "b": b._generate(TEXT, "0", None),
        "base": base._generate(TEXT, "0", None),
    }
    got: dict[str, list[np.ndarray]] = {name: [] for name in streams}
    while streams:
        for name in list(streams):
            chunk = next(streams[name], None)
            if chunk is None:
                del streams[name]
            else:
                got[name].append(chunk)
    for name, chunks in got.items():
        assert np.array_equal(np.concatenate(chunks), alone[name]), name


def test_concurrent_threads_neither_deadlock_nor_mix_adapters(
    voices: tuple[CsmLoraVoice, CsmLoraVoice],
) -> None:
    """Two sessions pulled at once from a 2-thread pool, each pull possibly on a new thread:
    the lock is per chunk, and no grad mode or lock outlives a `yield`."""
    a, b = voices
    alone = {"a": _audio(a), "b": _audio(b)}
    streams = {"a": a._generate(TEXT, "0", None), "b": b._generate(TEXT, "0", None)}
    got: dict[str, list[np.ndarray]] = {name: [] for name in streams}
    with ThreadPoolExecutor(2) as pool:
        while streams:
            pulls = {name: pool.submit(next, stream, None) for name, stream in streams.items()}
            for name, pull in pulls.items():
                chunk = pull.result(timeout=60)
                if chunk is None:
                    del streams[name]
                else:
                    got[name].append(chunk)
    for name, chunks in got.items():
        assert np.array_equal(np.concatenate(chunks), alone[name]), name


def test_closing_one_voice_leaves_the_other_and_the_base(
    base: CsmAdapter, base_audio: np.ndarray, voices: tuple[CsmLoraVoice, CsmLoraVoice]
) -> None:
    a, b = voices
    before_b = _audio(b)
    a.close()
    assert not a.loaded
    assert base.attached() == (LORA_B,)
    assert not [name for name, _ in base._model.named_modules() if LORA_A in name]
    assert np.array_equal(_audio(b), before_b)
    assert np.array_equal(_audio(base), base_audio)
    with pytest.raises(FailedPrecondition, match="no longer attached"):
        _audio(a)
    b.close()
    # the last voice gone, the base runs its plain modules again
    assert base.attached() == () and base._peft is None
    assert type(base._model.backbone_model.layers[0].self_attn.q_proj).__module__.startswith(
        "torch.nn"
    )
    assert np.array_equal(_audio(base), base_audio)


def test_attach_is_fast_and_reattach_gives_the_same_voice(
    base: CsmAdapter, models_dir: Path
) -> None:
    started = time.perf_counter()
    a = base.attach_lora(_meta(models_dir, LORA_A))
    attach_s = time.perf_counter() - started
    first = _audio(a)
    a.close()
    again = base.attach_lora(_meta(models_dir, LORA_A))
    try:
        assert np.array_equal(_audio(again), first)
    finally:
        again.close()
    assert attach_s < 5.0  # tens of ms here; loose for a loaded CI box


def test_lora_for_another_base_is_refused_precisely(
    base: CsmAdapter, models_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other-base"
    other.mkdir()
    build_base(other, None, 0, hidden_size=96)
    (tmp_path / "other-lora").mkdir()
    build_lora(tmp_path / "other-lora", other, 5)
    meta = _meta(models_dir, LORA_A).model_copy(update={"weights": str(tmp_path / "other-lora")})
    with pytest.raises(ModelLoadError) as refused:
        base.attach_lora(meta)
    message = str(refused.value)
    assert f"LoRA voice {LORA_A!r} does not fit base {BASE!r}" in message
    assert "backbone_model.layers.0.self_attn.q_proj has in_features 64 here" in message
    assert "needs 96" in message and str(other) in message
    assert refused.value.status == "FAILED_PRECONDITION"
    assert base.attached() == () and base._peft is None  # nothing was touched


def test_missing_or_foreign_lora_is_refused(base: CsmAdapter, models_dir: Path) -> None:
    missing = _meta(models_dir, LORA_A).model_copy(update={"weights": "models://nowhere"})
    with pytest.raises(WeightsMissing, match=f"duplexctl models pull {LORA_A}"):
        base.attach_lora(missing)
    foreign = _meta(models_dir, LORA_A).model_copy(update={"base_model": "another-base"})
    with pytest.raises(FailedPrecondition, match="belongs to base 'another-base'"):
        base.attach_lora(foreign)
    not_peft = _meta(models_dir, LORA_A).model_copy(update={"weights": f"models://{BASE}"})
    with pytest.raises(ModelLoadError, match="not a PEFT adapter folder"):
        base.attach_lora(not_peft)


def test_a_failed_first_attach_leaves_the_plain_base(
    base: CsmAdapter, base_audio: np.ndarray, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """peft injects its layers before it reads the weights; a read that fails then (a file
    cut short on disk, simulated here) must not leave them in the base."""
    import peft

    def unreadable(*args: object, **kwargs: object) -> None:
        raise OSError("adapter_model.safetensors: unexpected end of file")

    with monkeypatch.context() as patch:
        patch.setattr(peft.PeftModel, "load_adapter", unreadable)
        with pytest.raises(ModelLoadError, match=r"cannot attach LoRA voice .*end of file"):
            base.attach_lora(_meta(models_dir, LORA_A))
    assert base._peft is None and base.attached() == ()
    assert not any(".lora_" in name for name, _ in base._model.named_modules())
    assert np.array_equal(_audio(base), base_audio)
    voice = base.attach_lora(_meta(models_dir, LORA_A))  # and the next attach works
    voice.close()
