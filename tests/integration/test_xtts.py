"""XTTS-v2 in the real worker over real gRPC, on a tiny randomly initialised XTTS.

The model is built with coqui's own code (`duplexd devkit tiny-model xtts`) in the upstream
release layout, so the worker loads it exactly as it would load `coqui/XTTS-v2`: hot load,
streamed frames, PAUSE/RESUME, built-in and zero-shot voices, errors, TTL eviction. The tiny
GPT's stop token is pinned off, so every text unit is the same ≈ 1.25 s of audio.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest

from duplexd.audio.frames import FRAME_BYTES
from duplexd.config import repo_root
from duplexd.devkit import speech
from duplexd.devkit.procs import DaemonProc, daemon
from duplexd.errors import FailedPrecondition, InvalidArgument
from duplexd.rpc import tts_pb2 as pb
from duplexd.rpc.client import TTSClient, text_stream

pytest.importorskip("TTS", reason="needs the xtts extra: uv sync --extra xtts")

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "xtts-v2-en"
# two units for the session's chunker: "Hello there," and the rest
SENTENCE = "Hello there, this is the tiny XTTS model speaking."
SHORT = "One short unit from the tiny model."
# four units for the chunker (it cuts at sentence ends once a unit has 40 characters)
FOUR_UNITS = (
    "This is the first sentence of a longer reply, spoken in parts. "
    "Here comes the second sentence, which the worker speaks next. "
    "The third sentence follows after that one, as a new unit. "
    "And the fourth sentence closes the reply for this test."
)
CLONED = "narrator"  # voices/narrator.wav in the test's voicepack copy
# the conftest's FAST_TTL: eviction within seconds
FAST_TTL = ["--ttl-ms", "1500", "--min-residency-ms", "0", "--evict-check-interval-ms", "200"]


@dataclass(frozen=True)
class XttsSetup:
    models: Path
    packs: Path
    config: Path

    @property
    def voices(self) -> Path:
        return self.packs / "xtts" / MODEL / "voices"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> XttsSetup:
    """The tiny model under a models dir, and a voicepacks copy holding a reference clip."""
    from duplexd.devkit.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("xtts")
    models = root / "models"
    build_tiny_model("xtts", models / MODEL, seed=0)
    packs = root / "voicepacks"
    shutil.copytree(
        repo_root() / "voicepacks", packs, ignore=shutil.ignore_patterns("*.wav", "*.latents.pt")
    )
    clip = speech.concat(
        speech.speech("The quick brown fox jumps over the lazy dog, then runs away."),
        speech.silence(200),
    )
    with wave.open(str(packs / "xtts" / MODEL / "voices" / f"{CLONED}.wav"), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(speech.SAMPLE_RATE)
        out.writeframes(clip.tobytes())
    config = root / "worker.yaml"
    config.write_text(
        f"model_manager:\n  voicepacks_dir: {packs}\n"
        f"  catalog: {repo_root() / 'configs/model_catalog.yaml'}\n"
    )
    return XttsSetup(models, packs, config)


@pytest.fixture(scope="module")
def worker(setup: XttsSetup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    """A real worker (Piper default) that can hot-load the tiny XTTS; short TTL."""
    with daemon(
        "worker",
        tmp_path_factory.mktemp("xtts-worker"),
        ["--config", str(setup.config), *FAST_TTL],
        env={"DUPLEX_MODELS_DIR": str(setup.models)},
    ) as proc:
        yield proc


async def _collect(client: TTSClient, sid: str, text: str) -> list[pb.AudioFrame]:
    return [f async for f in client.synthesize(text_stream(sid, [text]))]


async def _start(client: TTSClient, voice: str = "") -> str:
    """Hot-load XTTS (a no-op while resident) and open a session on it."""
    await client.load_model(MODEL)
    return (await client.start_session(model_id=MODEL, voice=voice)).session_id


@pytest.mark.asyncio
async def test_hot_load_streams_exact_paced_frames(worker: DaemonProc) -> None:
    async with TTSClient(worker.addr) as client:
        loaded = await client.load_model(MODEL)
        assert loaded.model.resident and loaded.model.family == "xtts"
        assert loaded.model.native_sr == 24000 and loaded.model.device in {"cpu", "cuda:0"}
        session = await client.start_session(model_id=MODEL)
        assert (session.model_id, session.sample_rate, session.frame_ms) == (MODEL, 48000, 20)
        started = time.perf_counter()
        frames = await _collect(client, session.session_id, SENTENCE)
        elapsed = time.perf_counter() - started
        await client.end_session(session.session_id)
    assert all(len(f.pcm) == FRAME_BYTES and f.sample_rate == 48000 for f in frames)
    assert [f.seq for f in frames] == list(range(frames[0].seq, frames[0].seq + len(frames)))
    assert frames[-1].is_last and not any(f.is_last for f in frames[:-1])
    assert frames[0].unit_text.startswith("Hello there")
    audio_s = len(frames) * 0.020
    units = frames[-1].unit + 1
    assert 0.5 * units <= audio_s <= 3.0 * units, audio_s  # a unit of the tiny model: ≈ 1.25 s
    # paced to real time (loosely: on 2 busy cores the engine itself is slower than that)
    assert elapsed >= 0.6 * audio_s
    pcm = np.frombuffer(b"".join(f.pcm for f in frames), dtype=np.int16)
    assert np.abs(pcm).max() > 100, "the decoder's output, not silence"


@pytest.mark.asyncio
async def test_pause_resume_stop(worker: DaemonProc) -> None:
    """Mirrors the Piper test: PAUSE stops frames at once, RESUME goes on at the next unit."""
    async with TTSClient(worker.addr) as client:
        sid = await _start(client)
        call = client.synthesize_call(text_stream(sid, [FOUR_UNITS]))
        frames: list[pb.AudioFrame] = []
        async for frame in call:
            frames.append(frame)
            if len(frames) == 15:
                break
        paused = await client.control(sid, pb.PAUSE)
        assert paused.state == "paused"
        during_pause: list[pb.AudioFrame] = []
        more = asyncio.Event()

        async def drain() -> None:
            async for frame in call:
                during_pause.append(frame)
                more.set()

        reader = asyncio.create_task(drain())
        await asyncio.sleep(0.5)
        late = [f for f in during_pause if f.seq > paused.last_seq]
        assert len(late) <= 1, f"{len(late)} frames emitted after PAUSE"
        in_flight = len(during_pause)
        more.clear()
        resumed = await client.control(sid, pb.RESUME)
        assert resumed.state == "speaking"
        # the next unit may still be generating (the tiny model is slower than real time here)
        await asyncio.wait_for(more.wait(), 10)
        after = during_pause[in_flight:]
        assert after, "RESUME must continue the stream"
        assert after[0].seq > paused.last_seq
        assert after[0].unit > frames[-1].unit and after[0].unit_text
        stopped = await client.control(sid, pb.STOP)
        assert stopped.ok
        await asyncio.wait_for(reader, 10)
        assert call.done() and (await call.code()) == grpc.StatusCode.OK
        await client.end_session(sid)


@pytest.mark.asyncio
async def test_zero_shot_voice_from_a_reference_clip(worker: DaemonProc, setup: XttsSetup) -> None:
    cache = setup.voices / f"{CLONED}.latents.pt"
    cache.unlink(missing_ok=True)
    async with TTSClient(worker.addr) as client:
        sid = await _start(client, voice=CLONED)
        frames = await _collect(client, sid, SHORT)
        assert frames and all(len(f.pcm) == FRAME_BYTES for f in frames)
        assert cache.is_file(), "latents are cached beside the clip"
        computed = cache.stat().st_mtime_ns
        assert await _collect(client, sid, SHORT)
        assert cache.stat().st_mtime_ns == computed, "cached latents are reused"
        # a changed clip (here: a newer mtime) is a new voice: its latents are recomputed
        clip = setup.voices / f"{CLONED}.wav"
        later = time.time() + 5
        os.utime(clip, (later, later))
        assert await _collect(client, sid, SHORT)
        assert cache.stat().st_mtime_ns > computed
        await client.end_session(sid)
        # every built-in speaker from speakers_xtts.pth is a voice too
        sid = await _start(client, voice="Daisy Studious")
        await client.end_session(sid)


@pytest.mark.asyncio
async def test_unknown_voice_or_language_is_invalid_argument(worker: DaemonProc) -> None:
    async with TTSClient(worker.addr) as client:
        await client.load_model(MODEL)
        with pytest.raises(InvalidArgument, match=r"no voice 'nobody'.*Claribel Dervla.*narrator"):
            await client.start_session(model_id=MODEL, voice="nobody")
        with pytest.raises(InvalidArgument, match="does not speak 'tlh'"):
            await client.start_session(model_id=MODEL, language="tlh")
        # a regional tag of a listed language is fine
        sid = (await client.start_session(model_id=MODEL, language="en-GB")).session_id
        await client.end_session(sid)


@pytest.mark.asyncio
async def test_missing_or_broken_weights_name_the_pull_and_piper_keeps_serving(
    worker: DaemonProc, setup: XttsSetup
) -> None:
    folder = setup.models / MODEL
    away = folder.with_name(f"{MODEL}.away")
    async with TTSClient(worker.addr) as client:
        await _evicted(client)
        folder.rename(away)
        try:
            with pytest.raises(FailedPrecondition) as failed:
                await client.load_model(MODEL)
            assert str(folder) in str(failed.value)
            assert f"duplexctl models pull {MODEL}" in str(failed.value)
            # a half-pulled release names what is missing
            folder.mkdir()
            for name in ("config.json", "model.pth", "speakers_xtts.pth"):
                (folder / name).hardlink_to(away / name)
            with pytest.raises(FailedPrecondition, match=r"missing vocab\.json.*models pull"):
                await client.load_model(MODEL)
            listing = {m.id: m for m in (await client.list_models()).models}
            assert listing[MODEL].state == pb.UNAVAILABLE
            assert "vocab.json" in listing[MODEL].unavailable_reason
            # and a torn download says the checkpoint is unreadable
            (folder / "vocab.json").hardlink_to(away / "vocab.json")
            (folder / "model.pth").unlink()
            with (away / "model.pth").open("rb") as whole:
                (folder / "model.pth").write_bytes(whole.read(100_000))
            with pytest.raises(FailedPrecondition, match="not hold a loadable XTTS-v2 checkpoint"):
                await client.load_model(MODEL)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            away.rename(folder)
        sid = (await client.start_session()).session_id
        frames = await _collect(client, sid, "Piper is still here.")
        assert frames and all(len(f.pcm) == FRAME_BYTES for f in frames)
        await client.end_session(sid)


@pytest.mark.asyncio
async def test_ttl_eviction_returns_the_models_memory(worker: DaemonProc) -> None:
    """Worker RSS before a load, resident, and after TTL eviction.

    The first XTTS load of a process also imports torch, transformers and coqui (≈ 0.8 GB
    here), which no unload can return; so a first cycle primes, and the second measures
    what the model itself takes and gives back.
    """
    proc = psutil.Process(int(worker.info["pid"]))
    async with TTSClient(worker.addr) as client:
        samples: list[tuple[int, int, int]] = []
        for _cycle in range(2):
            await _evicted(client)
            before = proc.memory_info().rss
            sid = await _start(client)
            assert await _collect(client, sid, SHORT)
            loaded = proc.memory_info().rss
            listing = {m.id: m for m in (await client.list_models()).models}
            if listing[MODEL].device != "cpu":
                pytest.skip("on a GPU the weights live in VRAM, not in the worker's RSS")
            await client.end_session(sid)
            await _evicted(client)
            after = proc.memory_info().rss
            samples.append((before, loaded, after))
    before, loaded, after = samples[-1]
    grown, freed = loaded - before, loaded - after
    print(f"xtts rss MB before/loaded/evicted: {[tuple(x >> 20 for x in s) for s in samples]}")
    assert grown > 50 << 20, "the tiny model's weights alone are ≈ 90 MB"
    assert freed >= 0.5 * grown, f"only {freed >> 20} of {grown >> 20} MB came back"


async def _evicted(client: TTSClient, timeout_s: float = 15.0) -> None:
    """Wait until the TTL evictor has unloaded XTTS (at once if it is not resident; a failed
    load leaves it UNAVAILABLE until the next load tries again)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listing = {m.id: m for m in (await client.list_models()).models}
        if listing[MODEL].state in (pb.NOT_LOADED, pb.UNAVAILABLE):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{MODEL} not evicted within {timeout_s} s")
