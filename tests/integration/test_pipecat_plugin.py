"""Pipecat in-process (PipelineWorker + WorkerRunner) against a real `duplexd worker` (real gRPC,
Piper, registered in a real Redis fleet when redis-server exists): the plugin's frames, an
InterruptionFrame stopping the worker, a model switch, Pipecat errors, fleet resolution.

What the worker did is read from the worker itself: its /metrics (frames it sent, STOPs it
received) and its own answer to Control (the last frame a session emitted). The audio's words
are checked with Whisper tiny.en. Timings are the bench's business (`--suite plugins`).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import pytest

pytest.importorskip("pipecat", reason="the pipecat extra is not installed")

from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSUpdateSettingsFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.utils.errors import ErrorCategory
from pipecat.workers.runner import WorkerRunner
from plugin_support import ESPEAK, LONG, PIPER, SENTENCE, frames_sent, heard, import_without, metric

from duplex_plugins._worker import StopReport
from duplex_plugins.pipecat import DuplexTTSService
from duplexd.asr.faster_whisper import FasterWhisperASR
from duplexd.devkit.procs import DaemonProc, daemon, free_port
from duplexd.devkit.speech import word_error_rate
from duplexd.rpc import tts_pb2 as pb
from duplexd.rpc.client import TTSClient

pytestmark = pytest.mark.integration


NAME = "w-plugins"


# -- a real worker, announced in a real Redis when there is one ------------------------------


class Fleet:
    def __init__(self, worker: DaemonProc, redis_url: str | None) -> None:
        self.worker = worker
        self.redis_url = redis_url


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("pipecat")
    redis: subprocess.Popen[bytes] | None = None
    url = None
    args = ["--name", NAME]
    if shutil.which("redis-server"):
        port = free_port()
        redis = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_listening(port)
        url = f"redis://127.0.0.1:{port}/3"
        args += ["--redis", url]
    try:
        with daemon("worker", tmp, args, env={"DUPLEX_REDIS__HEARTBEAT_MS": "300"}) as proc:
            yield Fleet(proc, url)
    finally:
        if redis is not None:
            redis.terminate()
            redis.wait(10)


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError("redis-server did not start")


@pytest.fixture(scope="module")
def asr() -> Iterator[FasterWhisperASR]:
    yield FasterWhisperASR("tiny.en", cpu_threads=2)


# -- a pipeline: the service, then a probe that records what comes out ---------------------


class Probe(FrameProcessor):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.down: list[tuple[float, Frame]] = []
        self.changed = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self.down.append((time.perf_counter(), frame))
            self.changed.set()
        await self.push_frame(frame, direction)

    def audio(self) -> list[TTSAudioRawFrame]:
        return [f for _, f in self.down if isinstance(f, TTSAudioRawFrame)]

    async def until(self, pred: Any, timeout_s: float = 30.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not pred():
                self.changed.clear()
                await self.changed.wait()


class Bot:
    """PipelineWorker([tts, probe]) run by a WorkerRunner (pipecat 1.14's API)."""

    def __init__(self, tts: DuplexTTSService, sample_rate: int = 48_000) -> None:
        self.tts = tts
        self.probe = Probe()
        self.errors: list[ErrorFrame] = []
        self.stops: list[StopReport] = []
        self.worker = PipelineWorker(
            Pipeline([tts, self.probe]),
            params=PipelineParams(audio_out_sample_rate=sample_rate),
            enable_rtvi=False,
            idle_timeout_secs=None,
            cancel_on_idle_timeout=False,
        )
        self.runner = WorkerRunner(handle_sigint=False)
        self._started = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

        @self.worker.event_handler("on_pipeline_started")
        async def _started(worker: Any, frame: Frame) -> None:
            self._started.set()

        @self.worker.event_handler("on_pipeline_error")
        async def _error(worker: Any, frame: ErrorFrame) -> None:
            self.errors.append(frame)
            self.probe.changed.set()

        @tts.event_handler("on_worker_stopped")
        async def _stopped(service: Any, report: StopReport) -> None:
            self.stops.append(report)
            self.probe.changed.set()

    async def __aenter__(self) -> Bot:
        await self.runner.add_workers(self.worker)
        self._task = asyncio.create_task(self.runner.run())
        async with asyncio.timeout(30):
            await self._started.wait()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.worker.queue_frame(EndFrame())
        assert self._task is not None
        async with asyncio.timeout(30):
            await self._task

    async def say(self, text: str) -> list[TTSAudioRawFrame]:
        """Speak `text` to its end; the audio frames it produced."""
        start = len(self.probe.down)
        await self.worker.queue_frame(TTSSpeakFrame(text))
        await self.probe.until(
            lambda: any(isinstance(f, TTSStoppedFrame) for _, f in self.probe.down[start:])
        )
        return [f for _, f in self.probe.down[start:] if isinstance(f, TTSAudioRawFrame)]


# -- the tests ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_utterance_arrives_as_the_workers_20ms_frames(
    fleet: Fleet, asr: FasterWhisperASR
) -> None:
    worker = fleet.worker
    tts = DuplexTTSService(worker=worker.addr, model=PIPER)
    async with Bot(tts) as bot:
        before = frames_sent(worker)
        audio = await bot.say(SENTENCE)
        sent = frames_sent(worker) - before
        kinds = [type(f) for _, f in bot.probe.down]
    assert sent == tts.timings[-1].frames and len(audio) == sent
    assert all((len(f.audio), f.sample_rate, f.num_channels) == (1920, 48_000, 1) for f in audio), (
        "each frame is one 20 ms frame of the worker, untouched"
    )
    assert kinds.index(TTSStartedFrame) < kinds.index(TTSAudioRawFrame)
    assert kinds.index(TTSStoppedFrame) > len(kinds) - 1 - kinds[::-1].index(TTSAudioRawFrame)
    pcm = b"".join(f.audio for f in audio)
    text = heard(asr, pcm)
    assert word_error_rate(SENTENCE, text) <= 0.25, text
    assert not bot.errors and not bot.stops


@pytest.mark.asyncio
async def test_output_at_another_rate_is_resampled(fleet: Fleet) -> None:
    tts = DuplexTTSService(worker=fleet.worker.addr)
    async with Bot(tts, sample_rate=24_000) as bot:
        audio = await bot.say("Resampled for the pipeline.")
    worker_frames = tts.timings[-1].frames
    assert audio and all(f.sample_rate == 24_000 for f in audio)
    samples = sum(f.num_frames for f in audio)
    assert abs(samples - worker_frames * 480) <= 480  # the same duration at half the rate


@pytest.mark.asyncio
async def test_an_interruption_stops_the_workers_stream_within_one_frame(fleet: Fleet) -> None:
    worker = fleet.worker
    tts = DuplexTTSService(worker=worker.addr, model=PIPER)
    async with Bot(tts) as bot:
        stops_before = metric(worker, "duplex_tts_control_total", command="STOP")
        sent_before = frames_sent(worker)
        await bot.worker.queue_frame(TTSSpeakFrame(LONG))
        await bot.probe.until(lambda: len(bot.probe.audio()) >= 12)
        await bot.worker.queue_frame(InterruptionFrame())
        await bot.probe.until(lambda: bool(bot.stops))
        await asyncio.sleep(0.3)  # anything still coming would arrive by now
        at = next(t for t, f in bot.probe.down if isinstance(f, InterruptionFrame))
        late = [f for t, f in bot.probe.down if isinstance(f, TTSAudioRawFrame) and t > at]
        report = bot.stops[0]
        sent = frames_sent(worker) - sent_before
        async with TTSClient(worker.addr) as client:
            after = await client.control(report.session_id, pb.STOP)
        # the service keeps working: the next sentence speaks (on the same worker session)
        again = await bot.say("Still here.")
    assert late == [], f"{len(late)} audio frames after the InterruptionFrame"
    assert report.worker_state == "speaking" and report.status == "OK"
    assert report.stop_last_seq is not None and report.frames_after_stop <= 1
    assert metric(worker, "duplex_tts_control_total", command="STOP") == stops_before + 2
    # the worker's own records: the utterance ended there after a few frames (not the ~30 s
    # of the text), and its session's last frame is the one its STOP answer named (+1 at most)
    assert sent == report.frames_received and sent < 100
    assert after.detail == "no utterance in progress"
    assert after.last_seq - report.stop_last_seq <= 1 and after.last_seq == report.last_seq
    assert again and tts.timings[-1].session_id == report.session_id
    assert list(tts.stop_reports) == [report]


@pytest.mark.asyncio
async def test_a_model_switch_between_turns(fleet: Fleet) -> None:
    tts = DuplexTTSService(worker=fleet.worker.addr, model=PIPER)
    async with Bot(tts) as bot:
        ids = []
        for model in (ESPEAK, PIPER):
            await bot.worker.queue_frame(
                TTSUpdateSettingsFrame(delta=DuplexTTSService.Settings(model=model))
            )
            assert await bot.say("Switching voices.")
            ids.append(tts.timings[-1].model_id)  # what the worker's StartSession answered
        models = {m.id: m for m in await tts.list_models()}
    assert ids == [ESPEAK, PIPER]
    assert models[ESPEAK].resident and models[ESPEAK].refcount == 0  # its lease was let go
    assert not bot.errors


@pytest.mark.asyncio
async def test_an_unknown_model_is_a_pipecat_error_with_the_workers_message(
    fleet: Fleet,
) -> None:
    tts = DuplexTTSService(worker=fleet.worker.addr, model="nope")
    async with Bot(tts) as bot:
        await bot.probe.until(lambda: bool(bot.errors))  # reported at start
        first = bot.errors[0]
        assert not tts.is_usable  # a permanent error: no more work until the settings change
        await bot.worker.queue_frame(
            TTSUpdateSettingsFrame(delta=DuplexTTSService.Settings(model=PIPER))
        )
        audio = await bot.say("Back to a real model.")
    assert "unknown model 'nope'" in first.error
    assert first.category == ErrorCategory.INVALID_REQUEST
    assert first.processor is tts
    assert audio and tts.is_usable


@pytest.mark.asyncio
async def test_the_worker_is_found_in_the_fleet(fleet: Fleet) -> None:
    if fleet.redis_url is None:
        pytest.skip("redis-server is not installed")
    picked = DuplexTTSService(redis_url=fleet.redis_url)
    named = DuplexTTSService(worker=NAME, redis_url=fleet.redis_url, model=ESPEAK)
    models = await named.list_models()
    async with Bot(picked) as bot:
        audio = await bot.say("Found in the fleet.")
    assert audio and picked.worker_addr == fleet.worker.addr
    assert named.worker_addr == fleet.worker.addr
    assert {m.id for m in models} >= {PIPER, ESPEAK}
    await named.cleanup()


def test_without_the_extra_the_import_says_which_to_install() -> None:
    said = import_without("pipecat", "pipecat")
    assert "pip install 'duplex[pipecat]'" in said, said
