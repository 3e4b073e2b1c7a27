"""Kokoro-82M Japanese in the real worker: hot-loaded next to Piper, real speech over gRPC,
refusals for what it cannot speak, and Piper still serving afterwards."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from duplexd.audio.frames import FRAME_BYTES
from duplexd.devkit.procs import DaemonProc, daemon
from duplexd.errors import InvalidArgument
from duplexd.rpc import tts_pb2 as pb
from duplexd.rpc.client import TTSClient, text_stream

pytestmark = pytest.mark.integration

KOKORO = "kokoro-82m-ja"
PIPER = "piper-en-us-joe"
JAPANESE = "こんにちは。今日はいい天気ですね。"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[DaemonProc]:
    """A worker with a private models dir, so the joined Kokoro model lands in the test's
    temporary folder and not in the user's data dir."""
    workdir = tmp_path_factory.mktemp("kokoro-worker")
    with daemon("worker", workdir, env={"DUPLEX_MODELS_DIR": str(models_dir)}) as proc:
        yield proc


async def _collect(client: TTSClient, sid: str, text: str) -> list[pb.AudioFrame]:
    return [f async for f in client.synthesize(text_stream(sid, [text]))]


@pytest_asyncio.fixture
async def loaded(worker: DaemonProc) -> pb.LoadModelResp:
    async with TTSClient(worker.addr, timeout_s=120) as client:
        return await client.load_model(KOKORO)


@pytest.mark.asyncio
async def test_hot_loads_next_to_piper(
    worker: DaemonProc, models_dir: Path, loaded: pb.LoadModelResp
) -> None:
    assert loaded.model.family == "kokoro" and loaded.model.resident
    assert loaded.already_resident or loaded.load_ms > 0
    async with TTSClient(worker.addr) as client:
        listing = {m.id: m for m in (await client.list_models()).models}
    assert listing[PIPER].resident and listing[KOKORO].resident
    assert listing[KOKORO].memory_bytes > 50 * 2**20
    assert list(listing[KOKORO].languages) == ["ja"] and listing[KOKORO].native_sr == 24000
    # the four model parts were joined once, into the models dir
    assert len(list((models_dir / KOKORO).glob("kokoro-v1.0.int8-*.onnx"))) == 1


@pytest.mark.asyncio
async def test_speaks_japanese_in_exact_frames(
    worker: DaemonProc, loaded: pb.LoadModelResp
) -> None:
    async with TTSClient(worker.addr) as client:
        session = await client.start_session(model_id=KOKORO, language="ja")
        assert (session.model_id, session.sample_rate) == (KOKORO, 48000)
        started = time.perf_counter()
        first_audio: float | None = None
        frames: list[pb.AudioFrame] = []
        async for frame in client.synthesize(text_stream(session.session_id, [JAPANESE])):
            first_audio = first_audio or time.perf_counter() - started
            frames.append(frame)
        await client.end_session(session.session_id)
    assert all(len(f.pcm) == FRAME_BYTES and f.sample_rate == 48000 for f in frames)
    assert [f.seq for f in frames] == list(range(frames[0].seq, frames[0].seq + len(frames)))
    assert frames[-1].is_last and not any(f.is_last for f in frames[:-1])
    assert 1.0 < len(frames) * 0.020 < 6.0, "about two seconds of speech for two short sentences"
    pcm = np.frombuffer(b"".join(f.pcm for f in frames), dtype=np.int16)
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 500, "real speech, not silence"
    assert first_audio is not None and first_audio < 10


@pytest.mark.asyncio
async def test_refuses_what_it_cannot_speak(worker: DaemonProc, loaded: pb.LoadModelResp) -> None:
    async with TTSClient(worker.addr) as client:
        with pytest.raises(InvalidArgument, match=r"no voice 'af_heart'.*jf_alpha"):
            await client.start_session(model_id=KOKORO, voice="af_heart")
        with pytest.raises(InvalidArgument, match="does not speak 'en'"):
            await client.start_session(model_id=KOKORO, language="en")
        sid = (await client.start_session(model_id=KOKORO)).session_id
        with pytest.raises(InvalidArgument, match="speaks Japanese; got text with no Japanese"):
            await _collect(client, sid, "Hello, this is English only.")
        # the session survives a refused utterance
        assert await _collect(client, sid, "はい。")
        await client.end_session(sid)


@pytest.mark.asyncio
async def test_another_voice_and_piper_still_serves(
    worker: DaemonProc, loaded: pb.LoadModelResp
) -> None:
    async with TTSClient(worker.addr) as client:
        kumo = (await client.start_session(model_id=KOKORO, voice="jm_kumo")).session_id
        assert await _collect(client, kumo, "ありがとうございます。")
        await client.end_session(kumo)
        piper = await client.start_session()
        assert piper.model_id == PIPER
        frames = await _collect(client, piper.session_id, "Piper is still here.")
        await client.end_session(piper.session_id)
        listing = {m.id: m for m in (await client.list_models()).models}
    pcm = np.frombuffer(b"".join(f.pcm for f in frames), dtype=np.int16)
    assert frames and np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 500
    assert listing[PIPER].resident and listing[KOKORO].resident
