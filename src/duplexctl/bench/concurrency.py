"""concurrency: the most simultaneous streaming sessions with no underrun at a 40 ms buffer.

Ramp 1, 2, 4, 8, 12, 16, 20, 24 sessions (quick: 1, 2, 4, 8). At each level every session is
opened first, then all speak the same ~3 s, three-sentence text at once (three units, so later
units must be synthesized while earlier ones play: a one-unit text would only delay first
audio). Each stream's arrivals go through the simulated 40 ms client buffer; the worker's own
count of late frames (GetCapabilities metrics.late_frames, before/after) is read too. The ramp
stops at the first level with an underrun or a late frame; `max_sessions` is the level before.

Reference, same run: the engine's RTF on this text in this process (one session alone, with the
worker's engine thread count), and `ideal_sessions` = 1 / RTF, the real-time streams the engine
could sustain back to back if synthesis were all that ran.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

from duplexctl.bench import Row, Target
from duplexctl.bench.stats import playout_underruns, summary
from duplexd.errors import DuplexError
from duplexd.rpc.client import TTSClient, text_stream

if TYPE_CHECKING:
    from duplexctl.bench.context import BenchContext

__all__ = ["TEXT", "rows", "run", "targets", "title"]

title = "Concurrent sessions"

TEXT = "Sure thing. The next train leaves at six. It usually arrives right on time."

targets = [
    Target(
        "sessions",
        "≥ 16 simultaneous sessions with no late frames",
        "concurrency.max_sessions",
        ">=",
        16,
    ),
]


async def run(ctx: BenchContext) -> dict[str, Any]:
    levels = ctx.scale.concurrency_levels
    ctx.current.start(len(levels) + 1, "starting worker")
    async with await ctx.client() as client:
        listing = await client.list_models()
        default = next((m.id for m in listing.models if m.is_default), "")
        model = ctx.models[0] if ctx.models else default
        rtf = await _reference_rtf(ctx, model)
        ctx.current.step("ramp")
        results: dict[str, Any] = {}
        max_sessions = 0
        stopped_at: int | None = None
        for n in levels:
            ctx.current.step(f"{n} sessions")
            level = await _level(client, model, n)
            results[str(n)] = level
            if level["underruns"] or level["late_frames"]:
                stopped_at = n
                break
            max_sessions = n
    cores = os.cpu_count() or 1
    return {
        "model": model,
        "max_sessions": max_sessions,
        "stopped_at": stopped_at,
        "ceiling_reached": stopped_at is None,
        "levels": results,
        "reference": {
            "engine_rtf": rtf,
            "cpu_count": cores,
            "ideal_sessions": round(1 / rtf, 1) if rtf else None,
        },
    }


async def _reference_rtf(ctx: BenchContext, model: str) -> float | None:
    try:
        engine = await ctx.engine(model)
    except DuplexError:
        return None

    def measure() -> float:
        adapter = engine.adapter
        started = time.perf_counter()
        samples = sum(len(c) for c in adapter._generate(TEXT, adapter.meta.default_voice, None))
        return (time.perf_counter() - started) / (samples / adapter.sample_rate)

    rtf = min([await asyncio.to_thread(measure) for _ in range(2)])
    await asyncio.sleep(0.2)  # this process's engine threads go idle before the ramp
    return round(rtf, 4)


async def _level(client: TTSClient, model: str, n: int) -> dict[str, Any]:
    before = (await client.capabilities()).metrics.late_frames
    sessions = await asyncio.gather(*(client.start_session(model_id=model) for _ in range(n)))
    try:
        streams = await asyncio.gather(*(_speak(client, s.session_id) for s in sessions))
    finally:
        await asyncio.gather(*(client.end_session(s.session_id) for s in sessions))
    late = (await client.capabilities()).metrics.late_frames - before
    underruns = [playout_underruns(arrivals) for _, arrivals in streams]
    return {
        "sessions": n,
        "underruns": sum(underruns),
        "streams_with_underruns": sum(1 for u in underruns if u),
        "late_frames": int(late),
        "fal_ms": summary(fal for fal, _ in streams),
        "frames": sum(len(a) for _, a in streams),
    }


async def _speak(client: TTSClient, sid: str) -> tuple[float, list[float]]:
    arrivals: list[float] = []
    started = time.perf_counter()
    async for _frame in client.synthesize(text_stream(sid, [TEXT])):
        arrivals.append(time.perf_counter())
    if not arrivals:
        raise DuplexError("the worker sent no audio")
    return (arrivals[0] - started) * 1000, arrivals


def rows(result: dict[str, Any]) -> list[Row]:
    ref = result["reference"]
    bound = " (every level passed: a lower bound)" if result["ceiling_reached"] else ""
    out = [
        Row(
            f"max sessions, {result['model']}",
            f"{result['max_sessions']}{bound}",
            f"engine RTF {ref['engine_rtf']} alone → at most {ref['ideal_sessions']} "
            f"real-time streams",
            "concurrency.max_sessions",
        )
    ]
    for n, level in result["levels"].items():
        out.append(
            Row(
                f"  {n} sessions",
                f"{level['underruns']} underruns, {level['late_frames']} late frames",
                f"first audio p50 {level['fal_ms']['p50']:.0f} ms, p95 "
                f"{level['fal_ms']['p95']:.0f} ms",
                f"concurrency.levels.{n}.underruns",
            )
        )
    return out
