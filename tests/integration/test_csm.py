"""Sesame CSM and its LoRA voices in a real worker process, over real gRPC.

The models dir holds what `duplexctl models pull` would have put there, written by the tiny
builders instead: a random 2-layer CSM in `sesame/csm-1b`'s layout and two PEFT LoRA voices for
it. The worker finds them through the repository's voicepacks (sesame-csm-1b,
sesame-unsloth-lora01/02), exactly as it would find real weights.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("peft")
pytest.importorskip("transformers")

from duplexd.audio.frames import FRAME_BYTES
from duplexd.devkit.procs import DaemonProc, daemon
from duplexd.devkit.tiny import build_tiny_model
from duplexd.errors import FailedPrecondition
from duplexd.rpc import tts_pb2 as pb
from duplexd.rpc.client import TTSClient, text_stream

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE, LORA_A, LORA_B = "sesame-csm-1b", "sesame-unsloth-lora01", "sesame-unsloth-lora02"
# The session's chunker speaks it as two clauses; the tiny model never samples end-of-audio,
# so each runs to its length bound (1 s + 0.15 s per character): about 4.9 s in all.
TEXT = "Hello there, friend."
SPOKEN_S = (1.0 + 0.15 * len("Hello there,")) + (1.0 + 0.15 * len("friend."))


@pytest.fixture(scope="module")
def csm_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    models = tmp_path_factory.mktemp("models")
    build_tiny_model("csm", models / BASE)
    build_tiny_model("csm-lora", models / LORA_A, base=models / BASE, seed=1)
    build_tiny_model("csm-lora", models / LORA_B, base=models / BASE, seed=2)
    workdir = tmp_path_factory.mktemp("csm-worker")
    with daemon(
        "worker", workdir, ["--device", "cpu"], env={"DUPLEX_MODELS_DIR": str(models)}
    ) as proc:
        yield proc


def _models(resp: pb.ListModelsResp) -> dict[str, pb.ModelInfo]:
    return {m.id: m for m in resp.models}


async def _speak(client: TTSClient, model_id: str, text: str = TEXT) -> list[pb.AudioFrame]:
    session = await client.start_session(model_id=model_id)
    assert session.model_id == model_id and session.sample_rate == 48000
    try:
        return [f async for f in client.synthesize(text_stream(session.session_id, [text]))]
    finally:
        await client.end_session(session.session_id)


def _pcm(frames: list[pb.AudioFrame]) -> np.ndarray:
    assert frames and all(len(f.pcm) == FRAME_BYTES for f in frames)
    return np.frombuffer(b"".join(f.pcm for f in frames), dtype=np.int16)


@pytest.mark.asyncio
async def test_lora_voices_attach_to_one_resident_base(csm_worker: DaemonProc) -> None:
    async with TTSClient(csm_worker.addr) as client:
        assert _models(await client.list_models())[BASE].state != pb.RESIDENT
        loaded_a = await client.load_model(LORA_A)  # loads the base first, implicitly
        loaded_b = await client.load_model(LORA_B)
        models = _models(await client.list_models())
    assert loaded_a.model.base_model == BASE and loaded_b.model.base_model == BASE
    base, a, b = models[BASE], models[LORA_A], models[LORA_B]
    assert base.resident and a.resident and b.resident
    assert sorted(base.adapters) == [LORA_A, LORA_B]
    assert (a.base_model, b.base_model) == (BASE, BASE)
    # a voice holds its adapter's weights, not another copy of the base
    assert 0 < a.memory_bytes < 1_000_000 and 0 < b.memory_bytes < 1_000_000
    # and the console shows the base with its voices
    listing = subprocess.run(
        [sys.executable, "-m", "duplexctl", "models", "list", "--worker", csm_worker.addr],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "250"},
        check=False,
    )
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line for line in listing.stdout.splitlines() if line.strip()}
    assert rows[BASE].rstrip().endswith(f"+ {LORA_A}, {LORA_B}"), rows[BASE]  # the LORA column
    assert rows[LORA_A].rstrip().endswith(f"on {BASE}"), rows[LORA_A]
    assert loaded_b.load_ms < 5_000


@pytest.mark.asyncio
async def test_two_voices_stream_at_once_and_one_unloads_mid_stream(
    csm_worker: DaemonProc,
) -> None:
    async with TTSClient(csm_worker.addr) as client:
        await client.load_model(LORA_A)
        await client.load_model(LORA_B)
        frames_a, frames_b = await asyncio.gather(_speak(client, LORA_A), _speak(client, LORA_B))
        for frames in (frames_a, frames_b):
            assert len(frames) * 0.020 == pytest.approx(SPOKEN_S, abs=0.1)
            assert frames[-1].is_last
            assert np.abs(_pcm(frames)).max() > 0

        # B keeps streaming while A is detached: only A's adapter leaves the base
        session_b = await client.start_session(model_id=LORA_B)
        stream_b = client.synthesize(text_stream(session_b.session_id, [TEXT]))
        first = await anext(stream_b)
        assert (await client.unload_model(LORA_A)).ok
        rest = [f async for f in stream_b]
        await client.end_session(session_b.session_id)
        assert (len(rest) + 1) * 0.020 == pytest.approx(SPOKEN_S, abs=0.1)
        assert rest[-1].is_last and not first.is_last

        models = _models(await client.list_models())
        assert not models[LORA_A].resident
        assert models[BASE].resident and list(models[BASE].adapters) == [LORA_B]
        assert _pcm(await _speak(client, LORA_B)).size > 0  # B still speaks
        assert _pcm(await _speak(client, BASE)).size > 0  # and so does the base itself

        # A comes back in milliseconds: its base is still there
        again = await client.load_model(LORA_A)
        assert again.load_ms < 5_000
        assert sorted(_models(await client.list_models())[BASE].adapters) == [LORA_A, LORA_B]


@pytest.mark.asyncio
async def test_base_cannot_unload_while_voices_are_attached(csm_worker: DaemonProc) -> None:
    async with TTSClient(csm_worker.addr) as client:
        await client.load_model(LORA_A)
        await client.load_model(LORA_B)
        with pytest.raises(FailedPrecondition, match="LoRA voices attached"):
            await client.unload_model(BASE, force=True)

        session = await client.start_session(model_id=LORA_A)
        with pytest.raises(FailedPrecondition, match="is in use"):
            await client.unload_model(LORA_A)
        await client.end_session(session.session_id)

        assert (await client.unload_model(LORA_A)).ok
        assert (await client.unload_model(LORA_B)).ok
        assert (await client.unload_model(BASE)).ok
        models = _models(await client.list_models())
    assert not any(models[m].resident for m in (BASE, LORA_A, LORA_B))
