"""Piper streamed within a sentence: the real joe voice, cut at its decoder and decoded in chunks.

With the voice's noise turned off (`noise_scale: 0`, `noise_w_scale: 0`) synthesis is
deterministic, so the chunked decode can be compared sample by sample with the whole-sentence
decode `PiperVoice` does.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from duplexd.config import repo_root
from duplexd.tts.adapters import piper as piper_module
from duplexd.tts.adapters.piper import (
    CHUNK_FRAMES,
    CONTEXT_FRAMES,
    FIRST_FRAMES,
    PiperAdapter,
    _split_voice,
)
from duplexd.tts.catalog import Catalog

TEXT = "You said: can you help me with something? It is a quarter past nine right now."
QUIET = {"noise_scale": 0.0, "noise_w_scale": 0.0, "gain": 1.0}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("piper-split")


def _voice(cache: Path, monkeypatch: pytest.MonkeyPatch, **options: Any) -> PiperAdapter:
    monkeypatch.setattr(piper_module, "split_cache", lambda: cache)
    meta = Catalog.load(None, repo_root() / "voicepacks").get("piper-en-us-joe")
    adapter = PiperAdapter(meta.model_copy(update={"options": {**meta.options, **options}}))
    adapter.load()
    return adapter


def _chunks(adapter: PiperAdapter, text: str) -> list[np.ndarray]:
    return [np.asarray(c, dtype=np.float32) for c in adapter._generate(text, None, None)]


def test_the_first_audio_is_a_short_chunk_and_the_rest_follows(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = _voice(cache, monkeypatch)
    assert adapter.streaming
    hop = adapter._voice.config.hop_length
    chunks = _chunks(adapter, "It is a quarter past nine right now, and the sun is shining.")
    assert len(chunks[0]) == FIRST_FRAMES * hop  # ~0.19 s: decoded long before the rest
    assert len(chunks) >= 3
    assert all(len(c) <= CHUNK_FRAMES * hop for c in chunks[1:])
    assert all(np.abs(c).max() <= 1.0 for c in chunks)
    assert np.abs(np.concatenate(chunks)).max() > 0.2  # speech, not silence


def test_the_chunks_join_into_the_whole_sentence_decode(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    streamed = _voice(cache, monkeypatch, **QUIET)
    whole = _voice(cache, monkeypatch, stream=False, **QUIET)
    assert not whole.streaming
    # Piper scales each whole sentence to a peak of 1.0; the streamed one has a fixed gain
    sentences = list(streamed._voice.phonemize(TEXT))
    assert len(sentences) == 2
    ours = np.concatenate(_chunks(streamed, TEXT))
    theirs = [np.asarray(c) for c in whole._generate(TEXT, None, None)]
    assert len(ours) == sum(len(t) for t in theirs)
    start = 0
    for sentence in theirs:
        mine = ours[start : start + len(sentence)]
        start += len(sentence)
        mine = mine / np.abs(mine).max()
        error = mine - sentence
        snr = 10 * np.log10(float((sentence**2).sum()) / max(float((error**2).sum()), 1e-20))
        assert snr > 60, f"the chunks do not join into the sentence: SNR {snr:.1f} dB"


def test_no_context_would_leave_seams(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test above can fail: decoded without context, the chunks do not join."""
    adapter = _voice(cache, monkeypatch, **QUIET)
    reference = np.concatenate(_chunks(adapter, TEXT))
    monkeypatch.setattr(piper_module, "CONTEXT_FRAMES", 0)
    seamed = np.concatenate(_chunks(adapter, TEXT))
    error = seamed - reference
    snr = 10 * np.log10(float((reference**2).sum()) / float((error**2).sum()))
    assert CONTEXT_FRAMES > 0 and snr < 40


def test_the_cut_is_kept_and_a_broken_one_is_cut_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = _voice(tmp_path, monkeypatch)
    (folder,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    names = {p.name for p in folder.iterdir()}
    assert {"encoder.onnx", "decoder.onnx", "split.json"} < names
    (optimized,) = names - {"encoder.onnx", "decoder.onnx", "split.json"}
    assert optimized.startswith("encoder.cpu-ort")  # onnxruntime's rewrites, saved once
    adapter.close()
    (folder / "split.json").write_text("{not json")
    again = _voice(tmp_path, monkeypatch)
    assert again.streaming and _chunks(again, "Hello.")
    assert "latent" in (folder / "split.json").read_text()


def test_an_encoder_that_cannot_be_saved_optimized_still_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime

    _voice(tmp_path, monkeypatch).close()  # cut and saved
    (folder,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    (optimized,) = folder.glob("encoder.cpu-*")
    optimized.unlink()
    optimized.mkdir()  # in the way (as a read-only cache would be, but root writes those)
    with capture_logs() as logs:
        adapter = _voice(tmp_path, monkeypatch)
    assert adapter.streaming and _chunks(adapter, "Hello.")
    assert any("could not be saved" in e["event"] for e in logs)
    assert onnxruntime.__version__ in optimized.name and optimized.is_dir()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no half-written file


def test_a_cache_that_cannot_be_written_cuts_for_the_load_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # no folder can be made under it, even by root
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with capture_logs() as logs:
        adapter = _voice(blocker / "cache", monkeypatch)
    assert adapter.streaming and _chunks(adapter, "Hello.")
    assert any("cannot be kept" in e["event"] for e in logs)
    assert not list((tmp_path / "tmp").iterdir())  # the one-load cut is gone once read


def test_without_the_onnx_package_sentences_are_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with capture_logs() as logs:
        adapter = _voice(tmp_path, monkeypatch)
    assert not adapter.streaming
    assert len(_chunks(adapter, TEXT)) == 2  # one per sentence, as PiperVoice gives them
    events = [e["event"] for e in logs]
    assert any("onnx package is missing" in e for e in events), events


def test_a_graph_without_a_vits_decoder_is_not_cut(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])], "not-vits",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1])],
    )  # fmt: skip
    path = tmp_path / "voice.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert _split_voice(path, tmp_path / "cache") is None
    assert not (tmp_path / "cache").exists()
