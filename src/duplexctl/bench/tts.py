"""tts: first-audio latency over real gRPC next to the raw engine, RTF, frame cadence.

For each model and each of N short sentences (one clause each, so the worker's text chunker
hands the engine exactly the text the in-process reference gets), in this order:

1. raw engine, in this process: the same model loaded with its adapter class and the worker's
   thread count; the time to the engine's first chunk (``next(adapter._generate(...))``), the
   rest of the generator for the RTF (synthesis time / audio duration), then the time to the
   first batch of wire frames (``next(adapter.frame_batches(text))``: + resampling, framing);
2. the worker: a Synthesize call on an open session; first-audio latency is text sent → first
   20 ms frame received, and every frame's arrival time is kept for the cadence figures.

The two alternate text by text (with a 50 ms pause between, so the bench's own engine threads are
idle while the worker is measured), so a noisy machine slows both alike. `overhead_ms` is the
per-sentence difference fal − raw first chunk; its p50 is what the target checks.
Cadence: a simulated client playout buffer of 40 ms (`stats.playout_underruns`) counts
underruns; jitter is |inter-arrival − 20 ms| over each stream's steady part (after its first
10 frames, the worker's lead burst).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from duplexctl.bench import Row, Target
from duplexctl.bench.stats import playout_underruns, ratio, steady_jitter_ms, summary
from duplexd.errors import DuplexError
from duplexd.rpc.client import TTSClient, text_stream

if TYPE_CHECKING:
    from duplexctl.bench.context import BenchContext
    from duplexd.tts.adapters.base import TTSAdapter

__all__ = ["SENTENCES", "raw_reference", "rows", "run", "stream_fal", "targets", "title"]

title = "TTS latency and cadence"

SENTENCES: tuple[str, ...] = (
    "The weather is lovely today.",
    "Please turn off the kitchen lights.",
    "Your meeting starts in ten minutes.",
    "I found three restaurants near you.",
    "The package will arrive on Thursday.",
    "Could you repeat the last number?",
    "Traffic on the bridge is light this morning.",
    "Your alarm is set for seven.",
    "The train to Boston leaves at noon.",
    "I have added milk to your shopping list.",
    "It might rain later this afternoon.",
    "The battery is almost empty.",
    "Here is a short summary of the news.",
    "Sorry about that.",
    "Which song would you like to hear next?",
    "The museum closes at six tonight.",
    "Your flight is on time.",
    "Let me check the calendar for you.",
    "The oven has reached the right temperature.",
    "Thanks for waiting.",
)

targets = [
    Target(
        "tts-overhead",
        "first audio ≤ raw engine + 10 ms",
        "tts.*.overhead_ms.p50",
        "<=",
        10,
        "ms",
    ),
]

_WARMUP = "Hello."
# onnxruntime's pool threads spin-wait a moment after each run; on a 2-core machine the bench
# process's spinning would steal the worker's CPU during the measurement that follows.
_SETTLE_S = 0.05


async def run(ctx: BenchContext) -> dict[str, Any]:
    n = ctx.scale.tts_utterances
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(n)]
    models = ctx.model_ids
    ctx.current.start(len(models) * (n + 1), "starting worker")
    out: dict[str, Any] = {}
    async with await ctx.client() as client:
        for model in models:
            try:
                out[model] = await _bench_model(ctx, client, model, texts)
            except DuplexError as exc:
                out[model] = {"error": str(exc)}
    return out


async def _bench_model(
    ctx: BenchContext, client: TTSClient, model: str, texts: list[str]
) -> dict[str, Any]:
    ctx.current.step(f"{model}: loading")
    engine = await ctx.engine(model)
    session = await client.start_session(model_id=model)
    sid = session.session_id
    try:
        await asyncio.to_thread(raw_reference, engine.adapter, _WARMUP)  # warm both paths alike
        await stream_fal(client, sid, _WARMUP)
        raws: list[RawFigures] = []
        streams: list[list[float]] = []
        fals: list[float] = []
        for i, text in enumerate(texts, 1):
            raws.append(await asyncio.to_thread(raw_reference, engine.adapter, text))
            await asyncio.sleep(_SETTLE_S)  # let this process's engine threads stop spinning
            fal, arrivals = await stream_fal(client, sid, text)
            fals.append(fal)
            streams.append(arrivals)
            ctx.current.step(f"{model}: {i}/{len(texts)}")
    finally:
        await client.end_session(sid)
    raw_first = [r.first_chunk_ms for r in raws]
    fal_sum = summary(fals)
    raw_sum = summary(raw_first)
    jitter = [j for arrivals in streams for j in steady_jitter_ms(arrivals)]
    underruns = [playout_underruns(arrivals) for arrivals in streams]
    audio_s = sum(r.audio_s for r in raws)
    return {
        "utterances": len(texts),
        "fal_ms": fal_sum,
        "raw_first_chunk_ms": raw_sum,
        "first_batch_ms": summary(r.first_batch_ms for r in raws),
        "overhead_ms": summary(f - r for f, r in zip(fals, raw_first, strict=True)),
        "fal_ratio": ratio(fal_sum["p50"], raw_sum["p50"]),
        "rtf": round(sum(r.synth_s for r in raws) / audio_s, 4) if audio_s else None,
        "audio_s": round(audio_s, 2),
        "frames": sum(len(a) for a in streams),
        "underruns": sum(underruns),
        "underrun_utterances": sum(1 for u in underruns if u),
        "jitter_ms": summary(jitter),
        "reference": {"engine_load_ms": round(engine.load_ms, 1)},
    }


class RawFigures:
    __slots__ = ("audio_s", "first_batch_ms", "first_chunk_ms", "synth_s")

    def __init__(
        self, first_chunk_ms: float, synth_s: float, audio_s: float, first_batch_ms: float
    ) -> None:
        self.first_chunk_ms = first_chunk_ms
        self.synth_s = synth_s
        self.audio_s = audio_s
        self.first_batch_ms = first_batch_ms


def raw_reference(adapter: TTSAdapter, text: str) -> RawFigures:
    """The engine alone, in this process (blocking: run it on a thread)."""
    voice = adapter.meta.default_voice
    started = time.perf_counter()
    chunks = adapter._generate(text, voice, None)
    first = next(chunks)
    first_at = time.perf_counter()
    samples = len(first) + sum(len(chunk) for chunk in chunks)
    ended = time.perf_counter()
    batches = adapter.frame_batches(text, voice)
    batch_started = time.perf_counter()
    next(batches)
    batch_at = time.perf_counter()
    return RawFigures(
        (first_at - started) * 1000,
        ended - started,
        samples / adapter.sample_rate,
        (batch_at - batch_started) * 1000,
    )


async def stream_fal(client: TTSClient, sid: str, text: str) -> tuple[float, list[float]]:
    """(first-audio ms, arrival time of every frame) for one utterance over gRPC."""
    arrivals: list[float] = []
    started = time.perf_counter()
    async for _frame in client.synthesize(text_stream(sid, [text])):
        arrivals.append(time.perf_counter())
    if not arrivals:
        raise DuplexError(f"the worker sent no audio for {text!r}")
    return (arrivals[0] - started) * 1000, arrivals


def rows(result: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for model, r in result.items():
        if "error" in r:
            out.append(Row(f"{model}", f"error: {r['error']}"))
            continue
        fal, raw, over = r["fal_ms"], r["raw_first_chunk_ms"], r["overhead_ms"]
        out += [
            Row(
                f"{model} first audio p50/p95/p99",
                f"{_ms(fal['p50'])} / {_ms(fal['p95'])} / {_ms(fal['p99'])}",
                f"raw engine first chunk p50 {_ms(raw['p50'])}, p95 {_ms(raw['p95'])}",
                f"tts.{model}.fal_ms.p50",
            ),
            Row(
                f"{model} overhead over raw engine p50",
                f"{_ms(over['p50'])} (×{r['fal_ratio']})",
                f"first wire batch p50 {_ms(r['first_batch_ms']['p50'])}",
                f"tts.{model}.overhead_ms.p50",
            ),
            Row(f"{model} RTF (raw engine)", f"{r['rtf']}", f"{r['audio_s']} s of audio"),
            Row(
                f"{model} cadence at 40 ms buffer",
                f"{r['underruns']} underruns, jitter p95 {_ms(r['jitter_ms']['p95'])}",
                f"{r['frames']} frames, {r['utterances']} utterances",
                f"tts.{model}.underruns",
            ),
        ]
    return out


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} ms"
