"""plugins: the latency the LiveKit and Pipecat plugins add, and interruption through them.

Added latency, per framework: for each of N one-clause sentences, in this process, alternating
which goes first, the same text

1. over raw gRPC on an open session: Synthesize sent → first 20 ms frame received (what
   `--suite tts` calls first audio);
2. through the framework: LiveKit ``tts.synthesize(text)`` → first ``SynthesizedAudio`` out of
   the stream; Pipecat a ``TTSSpeakFrame`` queued on a running ``PipelineWorker`` → first
   ``TTSAudioRawFrame`` at the end of the pipeline.

`added_ms` (the target's figure) is measured inside each framework utterance, so it is exact
whatever the machine's load: the framework's first audio minus that same utterance's first
audio over gRPC (Synthesize call opened → first frame, in the plugin), i.e. `before_call_ms`
(framework request → the plugin opens the Synthesize call) + `after_grpc_ms` (the plugin gets
the worker's first frame → the framework hands it out). `vs_raw_ms` is 2 − 1 per sentence:
the same difference across two utterances, so it also carries the engine's variance from one
synthesis to the next (large on a loaded machine); it is reported, not checked.

Interruption, per framework, M times: a long text; once 10 frames have come out of the
framework, the framework's interruption (LiveKit: the stream's ``aclose()``; Pipecat: an
``InterruptionFrame`` queued on the worker). `silent_ms`: interruption → the worker emitted
nothing more (its answer to STOP when no frame followed it, else the end of its stream);
`stream_end_ms`: → the worker's stream had ended; `frames_after`: frames the framework still
delivered after its interruption (LiveKit: iteration after ``aclose()``; Pipecat: audio frames
reaching the pipeline's end after the ``InterruptionFrame``); `worker_frames_after_stop`: frames
the worker emitted after STOP took effect (the worker's own seq numbers).
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from duplexctl.bench import Row, SuiteUnavailable, Target
from duplexctl.bench.stats import summary
from duplexctl.bench.tts import SENTENCES, stream_fal
from duplexd.errors import DuplexError

if TYPE_CHECKING:
    from duplex_plugins._worker import SpeechTiming, StopReport
    from duplexctl.bench.context import BenchContext
    from duplexd.rpc.client import TTSClient

__all__ = ["FRAMEWORKS", "rows", "run", "targets", "title"]

title = "Framework plugins (LiveKit Agents, Pipecat)"

FRAMEWORKS = {"livekit": "livekit.agents", "pipecat": "pipecat"}

targets = [
    Target(
        "plugins-added",
        "framework first frame ≤ its gRPC first frame + 5 ms (p50)",
        "plugins.*.added_ms.p50",
        "<=",
        5,
        "ms",
    ),
    Target(
        "plugins-silent",
        "worker silent ≤ 20 ms after the framework's interruption (p95)",
        "plugins.*.interrupt.silent_ms.p95",
        "<=",
        20,
        "ms",
    ),
]

LONG = (
    "Once upon a time, in a small town by the sea, there lived a lighthouse keeper named Ada. "
    "Every night she climbed the long stairs and lit the great lamp for the ships."
)
_WARMUP = "Hello."
_FRAMES_BEFORE_INTERRUPT = 10
_SETTLE_S = 0.05  # let both sides' engine threads go quiet between measurements


async def run(ctx: BenchContext) -> dict[str, Any]:
    present = {name: _importable(module) for name, module in FRAMEWORKS.items()}
    if not any(present.values()):
        raise SuiteUnavailable(
            "neither framework is installed: pip install 'duplex[livekit,pipecat]'"
        )
    n = ctx.scale.tts_utterances
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(n)]
    model = ctx.model_ids[0]
    addr = await ctx.worker()
    ctx.current.start(len(present) * 2 * n, "starting worker")
    out: dict[str, Any] = {"model": model, "utterances": n, "interruptions": n}
    async with await ctx.client() as client:
        session = await client.start_session(model_id=model)
        sid = session.session_id
        try:
            for name, ok in present.items():
                if not ok:
                    out[name] = {"error": f"not installed: pip install 'duplex[{name}]'"}
                    continue
                bench = _livekit if name == "livekit" else _pipecat
                try:
                    out[name] = await bench(ctx, client, sid, addr, model, texts)
                except DuplexError as exc:
                    out[name] = {"error": str(exc)}
            caps = await client.capabilities()
            out["worker_fal_p50_ms"] = round(caps.metrics.fal_p50_ms, 2)
        finally:
            await client.end_session(sid)
    return out


def _importable(module: str) -> bool:
    if importlib.util.find_spec(module.split(".", maxsplit=1)[0]) is None:
        return False
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


# -- the two measurements, framework-neutral -----------------------------------------------


async def _latency(
    ctx: BenchContext,
    name: str,
    client: TTSClient,
    sid: str,
    texts: list[str],
    through: Callable[[str], Any],
) -> dict[str, Any]:
    """Raw gRPC and the framework on the same texts, alternating which goes first."""
    await stream_fal(client, sid, _WARMUP)
    await through(_WARMUP)
    raws: list[float] = []
    fws: list[float] = []
    grpc: list[float] = []
    after: list[float] = []
    before_call: list[float] = []
    for i, text in enumerate(texts):
        for turn in (0, 1) if i % 2 == 0 else (1, 0):
            await asyncio.sleep(_SETTLE_S)
            if turn == 0:
                raws.append((await stream_fal(client, sid, text))[0])
                continue
            fal, first_out, timing = await through(text)
            if timing.first_frame_at is None or timing.call_at is None:
                raise DuplexError(f"{name}: the plugin recorded no gRPC timing for {text!r}")
            requested = first_out - fal / 1000
            fws.append(fal)
            grpc.append((timing.first_frame_at - timing.call_at) * 1000)
            before_call.append((timing.call_at - requested) * 1000)
            after.append((first_out - timing.first_frame_at) * 1000)
        ctx.current.step(f"{name}: first audio {i + 1}/{len(texts)}")
    return {
        "framework_fal_ms": summary(fws),
        "grpc_fal_ms": summary(grpc),
        "added_ms": summary(f - g for f, g in zip(fws, grpc, strict=True)),
        "before_call_ms": summary(before_call),
        "after_grpc_ms": summary(after),
        "raw_grpc_fal_ms": summary(raws),
        "vs_raw_ms": summary(f - r for f, r in zip(fws, raws, strict=True)),
    }


def _interrupts(reports: list[tuple[StopReport | None, float, int]]) -> dict[str, Any]:
    """(the worker's stop report, interruption time, framework frames after it) per try."""
    stopped = [(r, t) for r, t, _ in reports if r is not None]

    def since(at: float | None, t: float) -> float | None:
        return None if at is None else (at - t) * 1000

    silent = []
    for r, t in stopped:
        quiet = r.acked_at if r.frames_after_stop == 0 and r.status == "OK" else r.ended_at
        if (value := since(quiet, t)) is not None:
            silent.append(value)
    return {
        "tries": len(reports),
        "stopped": len(stopped),
        "silent_ms": summary(silent),
        "stop_ack_ms": summary(v for r, t in stopped if (v := since(r.acked_at, t)) is not None),
        "stream_end_ms": summary(v for r, t in stopped if (v := since(r.ended_at, t)) is not None),
        "frames_after": sum(n for _, _, n in reports),
        "worker_frames_after_stop": sum(r.frames_after_stop for r, _ in stopped),
        "worker_frames_after_stop_max": max((r.frames_after_stop for r, _ in stopped), default=0),
    }


# -- LiveKit Agents ------------------------------------------------------------------------


async def _livekit(
    ctx: BenchContext, client: TTSClient, sid: str, addr: str, model: str, texts: list[str]
) -> dict[str, Any]:
    from livekit.agents import APIConnectOptions, APIError

    from duplex_plugins.livekit import TTS

    opts = APIConnectOptions(max_retry=0)
    tts = TTS(worker=addr, model=model, api_key=ctx.api_key)

    async def through(text: str) -> tuple[float, float, SpeechTiming]:
        started = time.perf_counter()
        stream = tts.synthesize(text, conn_options=opts)
        first = None
        async for _ev in stream:
            if first is None:
                first = time.perf_counter()
        await stream.aclose()
        if first is None:
            raise DuplexError(f"LiveKit produced no audio for {text!r}")
        return (first - started) * 1000, first, stream.timings[0]

    try:
        await tts.warm()
        result = await _latency(ctx, "livekit", client, sid, texts, through)
        reports: list[tuple[StopReport | None, float, int]] = []
        for i in range(len(texts)):
            await asyncio.sleep(_SETTLE_S)
            stream = tts.synthesize(LONG, conn_options=opts)
            got = 0
            async for _ev in stream:
                got += 1
                if got == _FRAMES_BEFORE_INTERRUPT:
                    break
            at = time.perf_counter()
            await stream.aclose()
            late = 0
            try:
                async for _ev in stream:  # a closed stream must deliver nothing more
                    late += 1
            except (APIError, RuntimeError):
                pass
            reports.append((stream.stop_report, at, late))
            ctx.current.step(f"livekit: interruption {i + 1}/{len(texts)}")
        result["interrupt"] = _interrupts(reports)
    except APIError as exc:
        raise DuplexError(f"LiveKit: {exc}") from exc
    finally:
        await tts.aclose()
    return result


# -- Pipecat -------------------------------------------------------------------------------


class _PipecatBot:
    """PipelineWorker([tts, probe]) on a WorkerRunner, with the probe's arrivals recorded."""

    def __init__(self, tts: Any) -> None:
        from pipecat.frames.frames import Frame
        from pipecat.pipeline.pipeline import Pipeline
        from pipecat.pipeline.worker import PipelineParams, PipelineWorker
        from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
        from pipecat.workers.runner import WorkerRunner

        bot = self
        self.arrivals: list[tuple[float, Any]] = []
        self.changed = asyncio.Event()
        self.errors: list[Any] = []

        class Probe(FrameProcessor):
            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                await super().process_frame(frame, direction)
                if direction == FrameDirection.DOWNSTREAM:
                    bot.arrivals.append((time.perf_counter(), frame))
                    bot.changed.set()
                await self.push_frame(frame, direction)

        self.worker = PipelineWorker(
            Pipeline([tts, Probe()]),
            params=PipelineParams(audio_out_sample_rate=48_000),
            enable_rtvi=False,
            idle_timeout_secs=None,
            cancel_on_idle_timeout=False,
        )
        self.runner = WorkerRunner(handle_sigint=False)
        self.started = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

        async def started(worker: Any, frame: Any) -> None:
            self.started.set()

        async def error(worker: Any, frame: Any) -> None:
            self.errors.append(frame)
            self.changed.set()

        self.worker.add_event_handler("on_pipeline_started", started)
        self.worker.add_event_handler("on_pipeline_error", error)

    async def __aenter__(self) -> _PipecatBot:
        await self.runner.add_workers(self.worker)
        self._task = asyncio.create_task(self.runner.run(), name="bench-pipecat-runner")
        async with asyncio.timeout(60):
            await self.started.wait()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        from pipecat.frames.frames import EndFrame

        await self.worker.queue_frame(EndFrame())
        if self._task is not None:
            async with asyncio.timeout(30):
                await self._task

    async def until(self, pred: Callable[[], bool], timeout_s: float = 60.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not pred():
                if self.errors:
                    raise DuplexError(f"Pipecat: {self.errors[0].error}")
                self.changed.clear()
                await self.changed.wait()


async def _pipecat(
    ctx: BenchContext, client: TTSClient, sid: str, addr: str, model: str, texts: list[str]
) -> dict[str, Any]:
    from loguru import logger
    from pipecat.frames.frames import (
        InterruptionFrame,
        TTSAudioRawFrame,
        TTSSpeakFrame,
        TTSStoppedFrame,
    )

    from duplex_plugins.pipecat import DuplexTTSService

    stops: list[StopReport] = []
    logger.disable("pipecat")  # its per-frame debug lines would cost more than we measure
    try:
        tts = DuplexTTSService(worker=addr, model=model, api_key=ctx.api_key)
        bot = _PipecatBot(tts)

        async def on_stopped(service: Any, report: StopReport) -> None:
            stops.append(report)
            bot.changed.set()

        tts.add_event_handler("on_worker_stopped", on_stopped)
        async with bot:

            async def through(text: str) -> tuple[float, float, SpeechTiming]:
                start = len(bot.arrivals)
                started = time.perf_counter()
                await bot.worker.queue_frame(TTSSpeakFrame(text))
                await bot.until(
                    lambda: any(isinstance(f, TTSStoppedFrame) for _, f in bot.arrivals[start:])
                )
                first = next(t for t, f in bot.arrivals[start:] if isinstance(f, TTSAudioRawFrame))
                return (first - started) * 1000, first, tts.timings[-1]

            result = await _latency(ctx, "pipecat", client, sid, texts, through)
            reports: list[tuple[StopReport | None, float, int]] = []
            for i in range(len(texts)):
                await asyncio.sleep(_SETTLE_S)
                start, stopped = len(bot.arrivals), len(stops)

                def speaking(start: int = start) -> bool:
                    audio = (f for _, f in bot.arrivals[start:] if isinstance(f, TTSAudioRawFrame))
                    return sum(1 for _ in audio) >= _FRAMES_BEFORE_INTERRUPT

                def reported(stopped: int = stopped) -> bool:
                    return len(stops) > stopped

                await bot.worker.queue_frame(TTSSpeakFrame(LONG))
                await bot.until(speaking)
                at = time.perf_counter()
                await bot.worker.queue_frame(InterruptionFrame())
                await bot.until(reported)
                await asyncio.sleep(0.1)  # a frame still coming would have arrived
                seen = next(t for t, f in bot.arrivals[start:] if isinstance(f, InterruptionFrame))
                late = sum(
                    1
                    for t, f in bot.arrivals[start:]
                    if isinstance(f, TTSAudioRawFrame) and t > seen
                )
                reports.append((stops[stopped], at, late))
                ctx.current.step(f"pipecat: interruption {i + 1}/{len(texts)}")
            result["interrupt"] = _interrupts(reports)
    finally:
        logger.enable("pipecat")
    return result


# -- the summary table ---------------------------------------------------------------------


def rows(result: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for name in FRAMEWORKS:
        r = result.get(name)
        if r is None:
            continue
        if "error" in r:
            out.append(Row(name, f"error: {r['error']}"))
            continue
        added, raw, fw = r["added_ms"], r["raw_grpc_fal_ms"], r["framework_fal_ms"]
        out.append(
            Row(
                f"{name} added first-frame latency p50",
                f"{_ms(added['p50'])} (p95 {_ms(added['p95'])})",
                f"framework first audio {_ms(fw['p50'])}, its gRPC first frame "
                f"{_ms(r['grpc_fal_ms']['p50'])}; raw gRPC {_ms(raw['p50'])} "
                f"(Δ {_ms(r['vs_raw_ms']['p50'])})",
                f"plugins.{name}.added_ms.p50",
            )
        )
        i = r["interrupt"]
        out.append(
            Row(
                f"{name} worker silent after interruption p95",
                f"{_ms(i['silent_ms']['p95'])} (p50 {_ms(i['silent_ms']['p50'])})",
                f"{i['stopped']}/{i['tries']} stopped, {i['frames_after']} frames after, worker "
                f"{i['worker_frames_after_stop_max']} max after STOP; stream end p95 "
                f"{_ms(i['stream_end_ms']['p95'])}",
                f"plugins.{name}.interrupt.silent_ms.p95",
            )
        )
    return out


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} ms"
