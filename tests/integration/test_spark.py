"""Spark-TTS in the real worker over real gRPC, on a tiny randomly initialised Spark-TTS.

The model is built with spark-tts-lib's own modules (`duplexd devkit tiny-model spark`) in the
upstream release layout, so the worker loads it exactly as it would load
`SparkAudio/Spark-TTS-0.5B`. One worker serves the whole module: it is asked for the model
before the weights exist (the error must name the pull), then the weights land and the same
worker hot-loads it next to Piper, with no restart. The tiny LM never samples its end token,
so every text unit runs to its 200-token cap (≈ 2.6 s of 16 kHz audio).
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from duplexd.audio.frames import FRAME_BYTES
from duplexd.config import repo_root
from duplexd.devkit import speech
from duplexd.devkit.procs import DaemonProc, daemon
from duplexd.errors import DuplexError, FailedPrecondition, InvalidArgument
from duplexd.rpc import tts_pb2 as pb
from duplexd.rpc.client import TTSClient, text_stream

# find_spec, not importorskip: importing spark-tts-lib pulls in torch and transformers, which
# collecting the other integration tests should not pay for
if importlib.util.find_spec("spark_tts_lib") is None:
    pytest.skip("needs the spark extra: uv sync --extra spark", allow_module_level=True)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    # spark-tts-lib decorates a helper with @torch.jit.script at import (building the model)
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]

MODEL = "spark-tts-0.5b"
CLONED = "narrator"  # voices/narrator.wav in the test's voicepack copy
SENTENCE = "Hello there, this is the tiny Spark model speaking."


@dataclass(frozen=True)
class Served:
    worker: DaemonProc
    models: Path
    before_pull: DuplexError  # what loading the model answered before its weights existed


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A real worker (Piper default) whose models dir is empty until the tiny model is built
    into it; a voicepacks copy holding a reference clip."""
    from duplexd.devkit.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("spark")
    models = root / "models"
    models.mkdir()
    packs = root / "voicepacks"
    shutil.copytree(repo_root() / "voicepacks", packs, ignore=shutil.ignore_patterns("*.wav"))
    with wave.open(str(packs / "spark" / MODEL / "voices" / f"{CLONED}.wav"), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(speech.SAMPLE_RATE)
        out.writeframes(speech.speech("The quick brown fox jumps over the lazy dog.").tobytes())
    config = root / "worker.yaml"
    config.write_text(
        f"model_manager:\n  voicepacks_dir: {packs}\n"
        f"  catalog: {repo_root() / 'configs/model_catalog.yaml'}\n"
    )
    with daemon(
        "worker", root, ["--config", str(config)], env={"DUPLEX_MODELS_DIR": str(models)}
    ) as worker:
        before_pull = asyncio.run(_load_error(worker.addr))
        build_tiny_model("spark", models / MODEL, seed=0)  # what `models pull` would put there
        yield Served(worker, models, before_pull)


async def _load_error(addr: str) -> DuplexError:
    async with TTSClient(addr) as client:
        try:
            await client.load_model(MODEL)
        except DuplexError as exc:
            return exc
    raise AssertionError(f"{MODEL} loaded with no weights")


async def _collect(client: TTSClient, sid: str, text: str) -> list[pb.AudioFrame]:
    return [f async for f in client.synthesize(text_stream(sid, [text]))]


def _check_frames(frames: list[pb.AudioFrame]) -> None:
    assert frames and all(len(f.pcm) == FRAME_BYTES and f.sample_rate == 48000 for f in frames)
    assert [f.seq for f in frames] == list(range(frames[0].seq, frames[0].seq + len(frames)))
    assert frames[-1].is_last and not any(f.is_last for f in frames[:-1])


def test_missing_weights_name_the_pull(served: Served) -> None:
    assert isinstance(served.before_pull, FailedPrecondition)
    message = str(served.before_pull)
    assert str(served.models / MODEL) in message
    assert f"duplexctl models pull {MODEL}" in message


@pytest.mark.asyncio
async def test_hot_load_next_to_piper_and_speak_a_cloned_voice(served: Served) -> None:
    async with TTSClient(served.worker.addr) as client:
        loaded = await client.load_model(MODEL)  # after the pull: no restart needed
        assert loaded.model.resident and loaded.model.family == "spark"
        assert loaded.model.native_sr == 16000 and loaded.model.device in {"cpu", "cuda:0"}
        listing = {m.id: m for m in (await client.list_models()).models}
        assert listing["piper-en-us-joe"].resident and listing[MODEL].resident

        session = await client.start_session(model_id=MODEL, voice=CLONED)
        assert (session.model_id, session.sample_rate, session.frame_ms) == (MODEL, 48000, 20)
        frames = await _collect(client, session.session_id, SENTENCE)
        _check_frames(frames)
        assert frames[0].unit_text.startswith("Hello there")
        units = frames[-1].unit + 1
        assert 0.5 * units <= len(frames) * 0.020 <= 4.2 * units  # ≤ 200 tokens of 20 ms a unit
        pcm = np.frombuffer(b"".join(f.pcm for f in frames), dtype=np.int16)
        assert np.abs(pcm).max() > 100, "the codec's output, not silence"
        await client.end_session(session.session_id)

        # a control voice: the LM writes the speaker tokens itself (cut to the codec's 32)
        sid = (await client.start_session(model_id=MODEL, voice="male")).session_id
        _check_frames(await _collect(client, sid, "Short."))
        await client.end_session(sid)

        sid = (await client.start_session()).session_id  # Piper, the default, still serves
        _check_frames(await _collect(client, sid, "Piper is still here."))
        await client.end_session(sid)


@pytest.mark.asyncio
async def test_unknown_voice_or_language_is_invalid_argument(served: Served) -> None:
    async with TTSClient(served.worker.addr) as client:
        await client.load_model(MODEL)
        with pytest.raises(InvalidArgument, match=rf"no voice 'nobody'.*{CLONED}, female, male"):
            await client.start_session(model_id=MODEL, voice="nobody")
        with pytest.raises(InvalidArgument, match="does not speak 'fr'"):
            await client.start_session(model_id=MODEL, language="fr")
        sid = (await client.start_session(model_id=MODEL, language="zh-CN")).session_id
        await client.end_session(sid)
