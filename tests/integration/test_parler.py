"""Parler-TTS served by a worker started from its own environment, over real gRPC.

parler-tts 0.2.3 pins transformers 4.46.1, which cannot share uv.lock, so the family runs in
`.venvs/parler` (`bash scripts/engine-env.sh parler`, pinned by docker/engines/parler). This
module builds (or checks) that environment itself, writes a tiny randomly initialised Parler-TTS
with the real library in the upstream `parler-tts-mini-v1` layout, starts `duplexd worker` from
that environment and talks to it from this (the main) environment's client. Nothing is skipped:
a missing environment is built, and a broken one fails here.

A main-environment worker lists the model too; loading it there must say how to get the engine
environment.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

from duplexd.audio.frames import FRAME_BYTES
from duplexd.config import repo_root
from duplexd.devkit.procs import DaemonProc, daemon, start_daemon
from duplexd.errors import DuplexError, InvalidArgument
from duplexd.rpc import tts_pb2 as pb
from duplexd.rpc.client import TTSClient, text_stream

# building the environment from an empty uv cache downloads torch (minutes)
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

MODEL = "parler-tts-mini-v1"
ENV = repo_root() / ".venvs" / "parler"
TEXT = "Hello there, this is the tiny Parler model speaking."


@dataclass(frozen=True)
class ParlerSetup:
    models: Path
    config: Path


def _run(cmd: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        cmd, cwd=repo_root(), capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert done.returncode == 0, (
        f"{' '.join(cmd)} exited with {done.returncode}:\n{done.stdout[-3000:]}\n"
        f"{done.stderr[-3000:]}"
    )
    return done


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> ParlerSetup:
    """The engine environment (built or checked), the tiny model, a voicepack copy for it."""
    # idempotent: builds .venvs/parler when missing or stale, else only checks that it imports
    _run(["bash", "scripts/engine-env.sh", "parler"], timeout_s=1500)
    root = tmp_path_factory.mktemp("parler")
    models = root / "models"
    _run(
        [
            str(ENV / "bin" / "duplexd"),
            "devkit",
            "tiny-model",
            "parler",
            "--out",
            str(models / MODEL),
        ],
        timeout_s=300,
    )
    # the shipped voicepack with what the tiny random weights need: the non-audio ids
    # suppressed, short bounded chunks, and its own (much smaller) memory estimate
    packs = root / "voicepacks"
    shutil.copytree(
        repo_root() / "voicepacks", packs, ignore=shutil.ignore_patterns("*.wav", "*.latents.pt")
    )
    meta_file = packs / "parler" / MODEL / "metadata.yaml"
    meta = yaml.safe_load(meta_file.read_text())
    meta["estimated_memory_mb"] = 1000
    meta["options"].update(suppress_non_audio_tokens=True, max_new_tokens=60, min_new_tokens=40)
    meta_file.write_text(yaml.safe_dump(meta))
    config = root / "worker.yaml"
    config.write_text(
        f"model_manager:\n  voicepacks_dir: {packs}\n"
        f"  catalog: {repo_root() / 'configs/model_catalog.yaml'}\n"
    )
    return ParlerSetup(models, config)


@pytest.fixture(scope="module")
def parler_worker(
    setup: ParlerSetup, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonProc]:
    """A worker from .venvs/parler serving only the parler family; the tiny model loaded at
    start (load + warm-up happen before it reports ready)."""
    proc = start_daemon(
        "worker",
        tmp_path_factory.mktemp("parler-worker"),
        ["--config", str(setup.config), "--default-model", MODEL, "--adapter", "parler"],
        env={"DUPLEX_MODELS_DIR": str(setup.models)},
        timeout_s=300,
        python=ENV / "bin" / "python",
    )
    try:
        yield proc
    finally:
        proc.stop()


async def _collect(client: TTSClient, sid: str, text: str) -> list[pb.AudioFrame]:
    return [f async for f in client.synthesize(text_stream(sid, [text]))]


@pytest.mark.asyncio
async def test_worker_from_the_engine_env_streams_parler_audio(parler_worker: DaemonProc) -> None:
    # the worker runs on the engine environment's interpreter, this client on the main one
    assert psutil.Process(parler_worker.info["pid"]).cmdline()[0] == str(ENV / "bin" / "python")
    assert Path(sys.prefix).resolve() != ENV.resolve()
    async with TTSClient(parler_worker.addr) as client:
        session = await client.start_session(voice="warm")
        assert (session.model_id, session.sample_rate, session.frame_ms) == (MODEL, 48000, 20)
        frames = await _collect(client, session.session_id, TEXT)
        await client.end_session(session.session_id)
    assert len(frames) > 10
    assert all(len(f.pcm) == FRAME_BYTES == 1920 for f in frames)
    assert [f.seq for f in frames] == list(range(frames[0].seq, frames[0].seq + len(frames)))
    assert frames[-1].is_last and not any(f.is_last for f in frames[:-1])
    pcm = np.frombuffer(b"".join(f.pcm for f in frames), dtype=np.int16).astype(np.float64)
    assert np.sqrt(np.mean(pcm**2)) > 10  # the random codec's output, not silence
    assert np.count_nonzero(pcm) > pcm.size // 2


@pytest.mark.asyncio
async def test_unknown_voice_is_invalid_argument_naming_the_voices(
    parler_worker: DaemonProc,
) -> None:
    async with TTSClient(parler_worker.addr) as client:
        with pytest.raises(InvalidArgument, match=r"no voice 'nobody'.*calm, warm, bright"):
            await client.start_session(model_id=MODEL, voice="nobody")


@pytest.mark.asyncio
async def test_main_env_worker_names_the_engine_env(
    setup: ParlerSetup, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A worker from the main environment (no parler-tts) lists the model; loading it answers
    how to build the engine environment and start a worker from it."""
    with daemon(
        "worker",
        tmp_path_factory.mktemp("main-worker"),
        ["--config", str(setup.config)],
        env={"DUPLEX_MODELS_DIR": str(setup.models)},
    ) as proc:
        async with TTSClient(proc.addr) as client:
            listed = await client.list_models()
            assert MODEL in {m.id for m in listed.models}
            with pytest.raises(DuplexError, match=r"scripts/engine-env\.sh parler"):
                await client.load_model(MODEL)
