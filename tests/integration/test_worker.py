"""The real worker process over real gRPC: frames, pacing, control, hot load, TTL, errors."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio

from duplexd.audio.frames import FRAME_BYTES
from duplexd.devkit.procs import DaemonProc, daemon, start_daemon
from duplexd.errors import (
    AuthError,
    FailedPrecondition,
    InvalidArgument,
    ModelNotFound,
    ResourceExhausted,
)
from duplexd.rpc import tts_pb2 as pb
from duplexd.rpc.client import TTSClient, text_stream

pytestmark = pytest.mark.integration

SENTENCE = "Hello there, this is the duplex worker speaking. It streams twenty millisecond frames."


async def _collect(client: TTSClient, sid: str, parts: list[str]) -> list[pb.AudioFrame]:
    return [f async for f in client.synthesize(text_stream(sid, parts))]


@pytest.mark.asyncio
async def test_frames_are_exact_and_paced(worker: DaemonProc) -> None:
    async with TTSClient(worker.addr) as client:
        session = await client.start_session()
        assert (session.model_id, session.sample_rate, session.frame_ms) == (
            "piper-en-us-joe",
            48000,
            20,
        )
        started = time.perf_counter()
        frames = await _collect(client, session.session_id, [SENTENCE])
        elapsed = time.perf_counter() - started
        await client.end_session(session.session_id)
    assert len(frames) > 100
    assert all(len(f.pcm) == FRAME_BYTES and f.sample_rate == 48000 for f in frames)
    assert [f.seq for f in frames] == list(range(frames[0].seq, frames[0].seq + len(frames)))
    assert frames[-1].is_last and not any(f.is_last for f in frames[:-1])
    # paced to real time: it takes the audio's duration minus the lead (120 ms), not less
    audio_s = len(frames) * 0.020
    assert elapsed >= audio_s - 0.120 - 0.05
    # real speech, not silence
    pcm = np.frombuffer(b"".join(f.pcm for f in frames), dtype=np.int16)
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 500
    # units: the first clause is spoken first, with its text on its first frame
    assert frames[0].unit == 0 and frames[0].unit_text.startswith("Hello there")
    assert max(f.unit for f in frames) >= 1


@pytest.mark.asyncio
async def test_streamed_partial_text_starts_before_the_text_ends(worker: DaemonProc) -> None:
    """LLM-style input: audio for the first clause arrives while later text is still coming."""
    async with TTSClient(worker.addr) as client:
        sid = (await client.start_session()).session_id
        sent_final = asyncio.Event()

        async def llm() -> object:
            for word in [
                "Sure,",
                "I",
                "can",
                "help",
                "with",
                "that.",
                "Let",
                "me",
                "think",
                "about",
                "the",
                "best",
                "way.",
            ]:
                yield pb.TextChunk(session_id=sid, text=word + " ")
                await asyncio.sleep(0.15)
            sent_final.set()
            yield pb.TextChunk(session_id=sid, is_final=True)

        first_frame_before_end = None
        async for _frame in client.synthesize(llm()):  # type: ignore[arg-type]
            if first_frame_before_end is None:
                first_frame_before_end = not sent_final.is_set()
        await client.end_session(sid)
    assert first_frame_before_end is True


@pytest.mark.asyncio
async def test_pause_resume_stop(worker: DaemonProc) -> None:
    async with TTSClient(worker.addr) as client:
        sid = (await client.start_session()).session_id
        long_text = " ".join([SENTENCE] * 4)
        call = client.synthesize_call(text_stream(sid, [long_text]))
        frames: list[pb.AudioFrame] = []
        async for frame in call:
            frames.append(frame)
            if len(frames) == 15:
                break
        paused = await client.control(sid, pb.PAUSE)
        assert paused.state == "paused"
        during_pause: list[pb.AudioFrame] = []

        async def drain() -> None:
            async for frame in call:
                during_pause.append(frame)

        reader = asyncio.create_task(drain())
        await asyncio.sleep(0.5)
        late = [f for f in during_pause if f.seq > paused.last_seq]
        # frames already in flight when PAUSE took effect may still arrive; none generated after
        assert len(late) <= 1, f"{len(late)} frames emitted after PAUSE"
        in_flight = len(during_pause)
        resumed = await client.control(sid, pb.RESUME)
        assert resumed.state == "speaking"
        await asyncio.sleep(0.3)
        after = during_pause[in_flight:]
        assert after, "RESUME must continue the stream"
        # next unit boundary, no replay: seq keeps increasing and the unit moved on
        assert after[0].seq > paused.last_seq
        assert after[0].unit > frames[-1].unit and after[0].unit_text
        stopped = await client.control(sid, pb.STOP)
        assert stopped.ok
        await asyncio.wait_for(reader, 5)  # the stream ends gracefully (status OK)
        assert call.done() and (await call.code()) == grpc.StatusCode.OK
        await client.end_session(sid)


@pytest.mark.asyncio
async def test_hot_load_espeak_and_ttl_eviction(worker: DaemonProc) -> None:
    async with TTSClient(worker.addr) as client:
        loaded = await client.load_model("espeak-en")
        assert loaded.model.resident and loaded.model.family == "espeak"
        again = await client.load_model("espeak-en")
        assert again.already_resident
        sid = (await client.start_session(model_id="espeak-en")).session_id
        frames = await _collect(client, sid, ["Hot swapped voice."])
        assert frames and all(len(f.pcm) == FRAME_BYTES for f in frames)
        listing = {m.id: m for m in (await client.list_models()).models}
        assert listing["espeak-en"].refcount == 1 and listing["espeak-en"].ttl_remaining_ms == -1
        await client.end_session(sid)
        listing = {m.id: m for m in (await client.list_models()).models}
        assert 0 <= listing["espeak-en"].ttl_remaining_ms <= 1500
        assert listing["piper-en-us-joe"].is_default and listing["piper-en-us-joe"].resident
        deadline = time.monotonic() + 10
        while listing["espeak-en"].state != pb.NOT_LOADED and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            listing = {m.id: m for m in (await client.list_models()).models}
        assert listing["espeak-en"].state == pb.NOT_LOADED, "TTL eviction not visible"
        assert listing["piper-en-us-joe"].resident, "the default model is never evicted"


@pytest.mark.asyncio
async def test_error_statuses_and_worker_keeps_serving(worker: DaemonProc) -> None:
    async with TTSClient(worker.addr) as client:
        with pytest.raises(ModelNotFound, match="unknown model 'nope'"):
            await client.start_session(model_id="nope")
        with pytest.raises(ModelNotFound):
            await client.load_model("piper-en-us-jo")
        sid = (await client.start_session()).session_id
        with pytest.raises(FailedPrecondition, match="cannot be switched"):
            await client.start_session(model_id="espeak-en", session_id=sid)
        with pytest.raises(FailedPrecondition, match=r"in use|use force|pinned|default"):
            await client.unload_model("piper-en-us-joe")
        with pytest.raises(ModelNotFound, match="no session"):
            await client.control("no-such-session", pb.PAUSE)
        with pytest.raises(InvalidArgument, match="text too long"):
            await _collect(client, sid, ["x" * 5000])
        # the client keeps writing after the error: it still gets the worker's status, not
        # grpc's "Internal error from Core" (grpc/grpc#36066)
        for _ in range(5):
            with pytest.raises(InvalidArgument, match="text too long"):
                await _collect(client, sid, ["x" * 5000] + ["and more text. "] * 20)
        with pytest.raises(InvalidArgument, match="session_id"):
            await _collect(client, "", ["hello"])
        with pytest.raises(InvalidArgument, match="voice"):
            await client.start_session(model_id="espeak-en", voice="klingon")
        # and it still serves
        frames = await _collect(client, sid, ["Still here."])
        assert frames
        await client.end_session(sid)


@pytest.mark.asyncio
async def test_a_load_that_cannot_happen_keeps_the_warm_models(tmp_path: Path) -> None:
    """No weights for XTTS, the resident cap full and espeak young (inside min residency):
    the load names the missing weights and the pull (not the cap) and evicts nothing; STATE
    says what a user can do about each model."""
    args = ["--preload-models", "espeak-en", "--resident-cap", "2", "--min-residency-ms", "600000"]
    env = {"DUPLEX_MODELS_DIR": str(tmp_path / "models")}
    with daemon("worker", tmp_path, args, env=env) as w:
        async with TTSClient(w.addr) as client:
            with pytest.raises(FailedPrecondition) as refused:
                await client.load_model("xtts-v2-en")
            assert "not found" in refused.value.message
            assert "duplexctl models pull xtts-v2-en" in (refused.value.hint or "")
            listing = {m.id: m for m in (await client.list_models()).models}
            assert listing["espeak-en"].resident and listing["piper-en-us-joe"].resident
            assert listing["xtts-v2-en"].status == "not pulled"
            assert listing["xtts-v2-en"].state == pb.UNAVAILABLE
            assert listing["parler-tts-mini-v1"].status == "needs parler env"
            assert "engine-env.sh parler" in listing["parler-tts-mini-v1"].unavailable_reason
            assert listing["melotts-en"].status == "unavailable"
            assert listing["espeak-en"].status == "resident"
            assert '"change": "evicted"' not in w.log_text()


@pytest.mark.asyncio
async def test_busy_worker_answers_resource_exhausted(tmp_path: Path) -> None:
    with daemon("worker", tmp_path, ["--config", str(_config(tmp_path, "max_sessions: 2"))]) as w:
        async with TTSClient(w.addr) as client:
            a = await client.start_session()
            await client.start_session()
            with pytest.raises(ResourceExhausted, match="max_sessions"):
                await client.start_session()
            await client.end_session(a.session_id)
            assert (await client.start_session()).session_id


@pytest.mark.asyncio
async def test_api_key_required_on_every_rpc(tmp_path: Path) -> None:
    with daemon("worker", tmp_path, env={"DUPLEX_API_KEY": "s3cret"}) as w:
        async with TTSClient(w.addr) as anonymous:
            with pytest.raises(AuthError, match="missing API key"):
                await anonymous.list_models()
        async with TTSClient(w.addr, api_key="wrong") as wrong:
            with pytest.raises(AuthError, match="wrong API key"):
                await wrong.start_session()
            with pytest.raises(AuthError):
                await _collect(wrong, "x", ["hi"])
        async with TTSClient(w.addr, api_key="s3cret") as good:
            assert (await good.list_models()).models


def test_missing_default_model_stops_with_clear_error(tmp_path: Path) -> None:
    with pytest.raises(
        RuntimeError, match=r"(?s)exited with 3:.*default model 'nope' is not in the catalog"
    ):
        start_daemon("worker", tmp_path, ["--default-model", "nope"])


def test_remote_bind_without_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"(?s)exited with 2:.*without an API key"):
        start_daemon("worker", tmp_path, ["--host", "0.0.0.0"])


@pytest.mark.asyncio
async def test_capabilities_and_metrics(worker: DaemonProc) -> None:
    async with TTSClient(worker.addr) as client:
        caps = await client.capabilities()
    assert caps.audio.sr == 48000 and caps.audio.frame_ms == 20
    assert caps.capabilities.cpu_ok and "piper" in caps.capabilities.families
    assert "piper-en-us-joe" in caps.resident_models
    assert caps.hardware.process_rss_bytes > 0
    import httpx

    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{worker.info['metrics_port']}/metrics")).text
    assert "duplex_tts_first_audio_ms_bucket" in text and "duplex_tts_resident_models" in text


@pytest.mark.asyncio
async def test_grpc_health_service(worker: DaemonProc) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with aio.insecure_channel(worker.addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = await stub.Check(health_pb2.HealthCheckRequest(service="duplex.tts.v1.TTS"))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def _config(tmp_path: Path, worker_lines: str) -> Path:
    path = tmp_path / "worker.yaml"
    path.write_text("worker:\n  " + worker_lines + "\n")
    return path


def _worker_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "worker.yaml"
    path.write_text(text)
    return path


@pytest.mark.asyncio
async def test_slow_client_backpressure_policies(tmp_path: Path) -> None:
    """A client that stops reading: `stall` delivers every frame late, `drop_oldest` skips
    audio to stay on real time."""
    text = " ".join([SENTENCE] * 2)
    received: dict[str, int] = {}
    for policy in ("stall", "drop_oldest"):
        cfg = _worker_yaml(tmp_path, f"worker:\n  backpressure: {policy}\n")
        # a slow client: a small receive window (no BDP auto-tuning), so the worker feels it
        small_window = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16_384)]
        with daemon("worker", tmp_path, ["--config", str(cfg)]) as w:
            async with TTSClient(w.addr, options=small_window) as client:
                sid = (await client.start_session()).session_id
                frames = 0
                async for _ in client.synthesize(text_stream(sid, [text])):
                    frames += 1
                    if frames == 10:
                        await asyncio.sleep(2.5)  # the client stalls; gRPC flow control fills
                received[policy] = frames
                caps = await client.capabilities()
        assert caps.metrics.frames_sent == frames
    assert received["drop_oldest"] < received["stall"] - 20, received


@pytest.mark.asyncio
async def test_reload_adds_a_voicepack_without_dropping_sessions(tmp_path: Path) -> None:
    import shutil

    from duplexd.config import repo_root

    packs = tmp_path / "voicepacks"
    shutil.copytree(repo_root() / "voicepacks", packs)
    cfg = _worker_yaml(
        tmp_path,
        f"model_manager:\n  voicepacks_dir: {packs}\n"
        f"  catalog: {repo_root() / 'configs/model_catalog.yaml'}\n",
    )
    with daemon("worker", tmp_path, ["--config", str(cfg)]) as w:
        async with TTSClient(w.addr) as client:
            sid = (await client.start_session()).session_id
            ids = {m.id for m in (await client.list_models()).models}
            assert "espeak-en-gb" not in ids
            new = packs / "espeak" / "espeak-en-gb"
            new.mkdir()
            (new / "metadata.yaml").write_text(
                "family: espeak\nnative_sr: 22050\ndefault_voice: en-gb\nvoices: [en-gb]\n"
            )
            reloaded = await client.control("", pb.RELOAD)
            assert reloaded.ok and reloaded.state == "reloaded"
            ids = {m.id for m in (await client.list_models()).models}
            assert "espeak-en-gb" in ids
            assert await _collect(client, sid, ["The old session still speaks."])
            gb = (await client.start_session(model_id="espeak-en-gb")).session_id
            assert await _collect(client, gb, ["Cheerio."])


@pytest.mark.asyncio
async def test_idle_sessions_time_out(tmp_path: Path) -> None:
    cfg = _worker_yaml(tmp_path, "worker:\n  session_idle_timeout_s: 0.6\n")
    with daemon("worker", tmp_path, ["--config", str(cfg)]) as w:
        async with TTSClient(w.addr) as client:
            sid = (await client.start_session()).session_id
            await asyncio.sleep(1.5)
            with pytest.raises(ModelNotFound, match="no session"):
                await client.control(sid, pb.PAUSE)
            listing = {m.id: m for m in (await client.list_models()).models}
            assert listing["piper-en-us-joe"].refcount == 0  # its lease was released
