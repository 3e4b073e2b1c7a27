"""soak: N sessions talking for T minutes; turns answered, errors, and the worker's RSS growth.

A fresh worker (defaults, the worker's default model) serves `sessions` sessions at once. Each
session plays a conversation: it streams a reply text the way an LLM does (a few words per
chunk), listens to all of it in real time, thinks for a moment, and goes again; about one turn in
six is barged in (PAUSE after a few frames, then STOP and a cancel, as the orchestrator does)
and the next one starts at once. The replies (fixed seed) vary from one word to several clauses
of a few hundred characters, with now and then a URL or a long unbroken word: every length of
unit the engine sees in service.

The worker's RSS (GetCapabilities.hardware.process_rss_bytes) is read every 2 s. The first
`warmup` seconds are warm-up (caches, arenas and the allocator reach their working size). A
single reading says little: it may land mid-synthesis (the engine's buffers are in use) or
between two (they were given back), so two windows of equal length are compared, the first and
the last `window` seconds after warm-up (a third of the soak, at most 60 s):
`rss_growth_pct` = (median of the last window − median of the first) / median of the first. The
target from the issue: ≤ 5 %. Also reported: the floor of each window (what stays when nothing
is being synthesized: `rss_floor_growth_pct`), the peak, and `rss_floor_slope_mb_per_min`,
the least-squares slope of the floor (the lowest reading of every 10 s) after warm-up: a worker
that keeps what it frees climbs there, while single readings mostly show where a synthesis was.

Scale: full 4 sessions × 3 min (+30 s warm-up), quick 2 × 1 min (+15 s), tiny (tests)
1 × 8 s (+3 s). `duplexctl bench` has no per-suite flags, so these override it:
``DUPLEX_BENCH_SOAK_SESSIONS``, ``DUPLEX_BENCH_SOAK_MINUTES``, ``DUPLEX_BENCH_SOAK_WARMUP_S``.
With ``--worker ADDR`` that worker is soaked instead (its RSS then includes whatever else it
serves). ``DUPLEX_WORKER__*`` variables reach the fresh worker, e.g.
``DUPLEX_WORKER__MALLOC_MMAP_THRESHOLD_KB=0`` for glibc's default allocator behaviour.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from duplexctl.bench import Row, Target
from duplexctl.bench.stats import summary
from duplexd.errors import DuplexError
from duplexd.rpc import tts_pb2 as pb
from duplexd.rpc.client import TTSClient

if TYPE_CHECKING:
    from duplexctl.bench.context import BenchContext

__all__ = ["SoakPlan", "plan_for", "rows", "run", "targets", "title"]

title = "Soak: sessions over minutes, worker memory"

targets = [
    Target(
        "soak-rss", "worker RSS growth after warm-up ≤ 5 %", "soak.rss_growth_pct", "<=", 5, "%"
    ),
    Target("soak-errors", "no failed turns", "soak.errors", "<=", 0),
]

_MB = 1024 * 1024
_SAMPLE_S = 2.0
_SEED = 19
_BARGE_IN = 1 / 6

_OPENERS = ["Sure.", "Okay,", "Well,", "Right.", "Hmm,", "Good question.", "Yes,", "No,"]
_CLAUSES = [
    "the next train leaves at six and usually arrives right on time",
    "I can help with that",
    "let me think about the best way to do it",
    "there are a few caveats you should know about before we start",
    "the scheduler keeps a refcount per model and evicts idle ones after a while",
    "in a small town by the sea there lived a lighthouse keeper named Ada",
    "it is 7:45 right now, and the weather looks fine for the rest of the day",
    "you will find the details at https://example.com/docs/getting-started?lang=en",
    "the package is called supercalifragilisticexpialidocious-extended-edition-v2",
    "three point one four one five nine is close enough for most purposes",
    "that depends on how many people are coming, and on the budget",
    "the meeting moved to Thursday afternoon, room four hundred and two",
]


@dataclass(frozen=True)
class SoakPlan:
    sessions: int
    minutes: float
    warmup_s: float


_PLANS = {
    "full": SoakPlan(4, 3.0, 30.0),
    "quick": SoakPlan(2, 1.0, 15.0),
    "tiny": SoakPlan(1, 8 / 60, 3.0),
}


def plan_for(scale: str, env: dict[str, str] | None = None) -> SoakPlan:
    """The scale's plan, with the DUPLEX_BENCH_SOAK_* overrides."""
    env = dict(os.environ) if env is None else env
    base = _PLANS.get(scale, _PLANS["full"])
    try:
        sessions = int(env.get("DUPLEX_BENCH_SOAK_SESSIONS") or base.sessions)
        minutes = float(env.get("DUPLEX_BENCH_SOAK_MINUTES") or base.minutes)
        warmup = float(env.get("DUPLEX_BENCH_SOAK_WARMUP_S") or base.warmup_s)
    except ValueError as exc:
        raise DuplexError(f"DUPLEX_BENCH_SOAK_*: not a number: {exc}") from None
    if sessions < 1 or minutes <= 0 or warmup < 0:
        raise DuplexError("DUPLEX_BENCH_SOAK_*: sessions ≥ 1, minutes > 0 and warm-up ≥ 0")
    return SoakPlan(sessions, minutes, warmup)


def reply(rng: random.Random) -> str:
    """One reply: an opener and 0-4 clauses, now and then a single word."""
    if rng.random() < 0.1:
        return rng.choice(_OPENERS)
    clauses = rng.sample(_CLAUSES, rng.randint(1, 4))
    text = rng.choice(_OPENERS) + " " + ", and ".join(clauses)
    return text + rng.choice([".", "!", "?", "."])


@dataclass
class _Tally:
    turns: int = 0
    interrupted: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    fal_ms: list[float] = field(default_factory=list)
    audio_s: float = 0.0


async def run(ctx: BenchContext) -> dict[str, Any]:
    plan = plan_for(ctx.scale.name)
    total_s = plan.warmup_s + plan.minutes * 60
    ctx.current.start(int(total_s // _SAMPLE_S) + 2, "starting a fresh worker")
    own = ctx.worker_addr is None or ctx.started_embedded
    proc = await ctx.start_worker([]) if own else None
    addr = proc.addr if proc is not None else str(ctx.worker_addr)
    try:
        async with TTSClient(addr, api_key=ctx.api_key) as client:
            model = ctx.models[0] if ctx.models else ""
            return await _soak(ctx, client, model, plan, fresh=own)
    finally:
        if proc is not None:
            await ctx.stop_worker(proc)


async def _soak(
    ctx: BenchContext, client: TTSClient, model: str, plan: SoakPlan, *, fresh: bool
) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + plan.warmup_s + plan.minutes * 60
    warm_at = started + plan.warmup_s
    tally = _Tally()
    samples: list[tuple[float, float]] = []  # (seconds since start, RSS MB)
    sessions = [await client.start_session(model_id=model) for _ in range(plan.sessions)]
    sids = [s.session_id for s in sessions]
    rss_start = await _rss_mb(client)
    rngs = [random.Random(_SEED + i) for i in range(len(sids))]  # noqa: S311  # a script
    talkers = [
        asyncio.create_task(_talk(client, sid, rng, deadline, tally))
        for sid, rng in zip(sids, rngs, strict=True)
    ]
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(min(_SAMPLE_S, max(deadline - time.monotonic(), 0.0)))
            samples.append((time.monotonic() - started, await _rss_mb(client)))
            ctx.current.step("warming up" if time.monotonic() < warm_at else "soaking")
    finally:  # turns still speaking at the deadline are cut off, not counted
        for task in talkers:
            task.cancel()
        await asyncio.gather(*talkers, return_exceptions=True)
        for sid in sids:
            try:
                await client.end_session(sid)
            except DuplexError:
                tally.errors["EndSession"] += 1
    caps = await client.capabilities()
    after = [(t, rss) for t, rss in samples if t > plan.warmup_s] or [(0.0, rss_start)]
    window = min(60.0, plan.minutes * 60 / 3)
    first = [rss for t, rss in after if t <= after[0][0] + window]
    last = [rss for t, rss in after if t >= after[-1][0] - window]
    rss_warm, rss_end = statistics.median(first), statistics.median(last)
    return {
        "model": sessions[0].model_id,
        "sessions": plan.sessions,
        "minutes": plan.minutes,
        "warmup_s": plan.warmup_s,
        "fresh_worker": fresh,
        "turns": tally.turns,
        "interrupted": tally.interrupted,
        "errors": sum(tally.errors.values()),
        "error_kinds": dict(tally.errors),
        "fal_ms": summary(tally.fal_ms),
        "audio_s": round(tally.audio_s, 1),
        "late_frames": int(caps.metrics.late_frames),
        "rss_start_mb": round(rss_start, 1),
        "rss_window_s": round(window, 1),
        "rss_warm_mb": round(rss_warm, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_max_mb": round(max((rss for _, rss in samples), default=rss_start), 1),
        "rss_growth_pct": round(100 * (rss_end - rss_warm) / rss_warm, 2),
        "rss_floor_warm_mb": round(min(first), 1),
        "rss_floor_end_mb": round(min(last), 1),
        "rss_floor_growth_pct": round(100 * (min(last) - min(first)) / min(first), 2),
        "rss_floor_slope_mb_per_min": _slope(_floors(after, 10.0)),
        "rss_samples": [[round(t, 1), round(rss, 1)] for t, rss in samples],
    }


async def _talk(
    client: TTSClient, sid: str, rng: random.Random, deadline: float, tally: _Tally
) -> None:
    """One session's conversation until the deadline."""
    while time.monotonic() < deadline:
        text = reply(rng)
        barge_after = rng.randint(5, 40) if rng.random() < _BARGE_IN else None
        started = time.perf_counter()
        call = client.open_stream(_llm(sid, text, rng))
        frames = 0
        try:
            async for frame in call:
                if frames == 0:
                    tally.fal_ms.append((time.perf_counter() - started) * 1000)
                frames += 1
                if barge_after is not None and frames >= barge_after:
                    await client.control(sid, pb.PAUSE)
                    await client.control(sid, pb.STOP)
                    call.cancel()
                    tally.interrupted += 1
                    break
                if frame.is_last:
                    tally.turns += 1
        except DuplexError as exc:
            tally.errors[type(exc).__name__ + ": " + exc.message[:60]] += 1
            await asyncio.sleep(0.5)
            continue
        finally:
            tally.audio_s += frames * 0.020
        if barge_after is None:
            await asyncio.sleep(rng.uniform(0.3, 1.2))  # the user's turn


async def _llm(sid: str, text: str, rng: random.Random) -> AsyncIterator[pb.TextChunk]:
    """The reply as an LLM streams it: a few words at a time, ~30 ms apart."""
    words = text.split(" ")
    i = 0
    while i < len(words):
        n = rng.randint(1, 4)
        yield pb.TextChunk(session_id=sid, text=" ".join(words[i : i + n]) + " ")
        i += n
        await asyncio.sleep(0.03)
    yield pb.TextChunk(session_id=sid, is_final=True)


async def _rss_mb(client: TTSClient) -> float:
    return (await client.capabilities()).hardware.process_rss_bytes / _MB


def _floors(points: list[tuple[float, float]], every_s: float) -> list[tuple[float, float]]:
    """The lowest reading of each `every_s` bucket, at the bucket's start; buckets with fewer
    than three readings (the last one, cut by the deadline) say too little and are left out."""
    buckets: dict[int, list[float]] = {}
    for t, y in points:
        buckets.setdefault(int(t // every_s), []).append(y)
    return [(key * every_s, min(ys)) for key, ys in sorted(buckets.items()) if len(ys) >= 3]


def _slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares MB per minute."""
    if len(points) < 3:
        return None
    ts = [t / 60 for t, _ in points]
    ys = [y for _, y in points]
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    den = sum((t - mt) ** 2 for t in ts)
    if den == 0:
        return None
    return round(sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / den, 2)


def _duration(minutes: float) -> str:
    return f"{minutes:g} min" if minutes >= 1 else f"{minutes * 60:.0f} s"


def rows(result: dict[str, Any]) -> list[Row]:
    fal = result["fal_ms"]
    slope = result["rss_floor_slope_mb_per_min"]
    return [
        Row(
            "sessions × duration",
            f"{result['sessions']} × {_duration(result['minutes'])}",
            f"+ {result['warmup_s']:g} s warm-up"
            + ("" if result["fresh_worker"] else ", on the given worker"),
        ),
        Row(
            "turns answered / interrupted",
            f"{result['turns']} / {result['interrupted']}",
            f"{result['audio_s']:.0f} s of audio, {result['late_frames']} late frames",
        ),
        Row(
            "failed turns",
            f"{result['errors']}",
            ", ".join(f"{k} ×{n}" for k, n in result["error_kinds"].items()),
            "soak.errors",
        ),
        Row(
            "first audio p50 / p95",
            "—" if fal["p50"] is None else f"{fal['p50']:.0f} / {fal['p95']:.0f} ms",
        ),
        Row(
            "worker RSS growth after warm-up",
            f"{result['rss_growth_pct']:+.1f} %",
            f"median of the first vs the last {result['rss_window_s']:.0f} s: "
            f"{result['rss_warm_mb']:.0f} → {result['rss_end_mb']:.0f} MB",
            "soak.rss_growth_pct",
        ),
        Row(
            "worker RSS floor / peak",
            f"{result['rss_floor_growth_pct']:+.1f} % floor",
            f"floor {result['rss_floor_warm_mb']:.0f} → {result['rss_floor_end_mb']:.0f} MB, "
            f"peak {result['rss_max_mb']:.0f}, at start {result['rss_start_mb']:.0f}"
            + ("" if slope is None else f", floor slope {slope:+.1f} MB/min"),
            "soak.rss_floor_growth_pct",
        ),
    ]
