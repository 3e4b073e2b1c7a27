"""load: model load, resident-load, unload and memory returned, TTL eviction, idle memory.

Timings, per model, on the worker under test:

1. make it not resident (UnloadModel; the worker's default model only when the bench started
   the worker itself, with ``force``);
2. LoadModel: the worker's `load_ms` (load + warmup) and the RPC's wall time;
3. LoadModel again, several times, while it is resident: wall time of the RPC (target ≤ 5 ms);
4. UnloadModel: wall time, and the `freed_bytes` the worker claims;
5. put the worker back as it was (reload what was resident).

The reference for the load time is the same model loaded and warmed in this process.
`piper_load_warmup_ms` is the load + warmup the worker under test reported for its default
model (ListModels `load_ms`) before this suite touched it.

Memory, on a dedicated fresh worker started with
``--ttl-ms 1000 --min-residency-ms 0 --evict-check-interval-ms 200`` (RSS from
GetCapabilities.hardware.process_rss_bytes):

- `idle_rss_mb`: its RSS right after start: the default Piper voice loaded and warmed, no session;
- per model, a first load + unload (for the default model: its load at start) pays the one-time
  cost a process never gives back (the engine's libraries, e.g. onnxruntime: ≈ 35 MB); its
  figures are kept (`first_load_rss_mb`, `first_unload_returned_mb`). Then RSS is read before a
  second load, after it and after its unload: `memory_returned_pct` = (loaded − unloaded) /
  (loaded − before), the steady state of a worker that swaps models. Memory an allocator kept
  for reuse shows as a second load that grows RSS by little and an unload that returns nothing;
  when that growth is under 5 MB the first load's growth is the denominator instead. Null for a
  model too small to see in RSS (under 5 MB both times: eSpeak);
- TTL: espeak-en is loaded and ListModels polled every 20 ms until it is no longer resident:
  `ttl_evict_observed_ms` counts from LoadModel returning, next to the configured TTL.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from duplexctl.bench import Row, Target
from duplexctl.bench.stats import summary
from duplexd.errors import DuplexError
from duplexd.rpc.client import TTSClient

if TYPE_CHECKING:
    from duplexctl.bench.context import BenchContext
    from duplexd.rpc import tts_pb2 as pb

__all__ = ["rows", "run", "targets", "title"]

title = "Model load, memory and eviction"

_MB = 1024 * 1024
_MIN_MEASURABLE_MB = 5.0
TTL_MS = 1000
_TTL_MODEL = "espeak-en"
_TTL_TIMEOUT_S = 15.0
_POLL_S = 0.02

targets = [
    Target(
        "load-resident-rpc",
        "LoadModel of a resident model ≤ 5 ms",
        "load.*.resident_load_rpc_ms",
        "<=",
        5,
        "ms",
    ),
    Target(
        "piper-load-warmup",
        "Piper load + warmup ≤ 400 ms",
        "load.piper_load_warmup_ms",
        "<=",
        400,
        "ms",
    ),
    Target("idle-rss", "idle worker RSS with Piper ≤ 400 MB", "load.idle_rss_mb", "<=", 400, "MB"),
    Target(
        "unload-returns",
        "unload returns ≥ 90 % of a model's memory",
        "load.*.memory_returned_pct",
        ">=",
        90,
        "%",
    ),
]


async def run(ctx: BenchContext) -> dict[str, Any]:
    models = ctx.model_ids
    ctx.current.start(2 * len(models) + 4, "starting worker")
    out: dict[str, Any] = {}
    async with await ctx.client() as client:
        listing = await client.list_models()
        infos = {m.id: m for m in listing.models}
        default = next((m for m in listing.models if m.is_default), None)
        out["default_model"] = default.id if default else None
        out["piper_load_warmup_ms"] = (
            round(default.load_ms, 1)
            if default is not None and default.family == "piper" and default.load_ms
            else None
        )
        out["idle_rss_after_use_mb"] = _mb((await client.capabilities()).hardware.process_rss_bytes)
        ctx.current.step("models")
        for model in models:
            ctx.current.step(f"cycling {model}")
            info = infos.get(model)
            if info is None:
                out[model] = {"error": f"worker has no model {model!r}"}
                continue
            try:
                out[model] = await _cycle(ctx, client, info)
            except DuplexError as exc:
                out[model] = {"error": str(exc)}
    ctx.current.step("fresh worker with a 1 s TTL")
    fresh = await _fresh_worker(ctx, models)
    for model, figures in fresh.pop("memory").items():
        if isinstance(out.get(model), dict) and "error" not in out[model]:
            out[model].update(figures)
    out.update(fresh)
    return out


async def _rss(client: TTSClient) -> int:
    return int((await client.capabilities()).hardware.process_rss_bytes)


async def _cycle(ctx: BenchContext, client: TTSClient, info: pb.ModelInfo) -> dict[str, Any]:
    model = info.id
    if info.is_default and not ctx.started_embedded:
        return {
            "skipped": "the default model of a worker the bench did not start is left alone",
            "load_ms": round(info.load_ms, 1) if info.load_ms else None,
        }
    force = info.is_default or info.pinned
    engine = await ctx.engine(model)
    if info.resident:
        await client.unload_model(model, force=force)
    await asyncio.sleep(0.1)  # nothing of ours runs while the worker loads

    started = time.perf_counter()
    loaded = await client.load_model(model)
    cold_rpc_ms = (time.perf_counter() - started) * 1000

    resident_ms: list[float] = []
    for _ in range(ctx.scale.resident_load_repeats):
        started = time.perf_counter()
        again = await client.load_model(model)
        resident_ms.append((time.perf_counter() - started) * 1000)
        if not again.already_resident:
            raise DuplexError(f"{model} was not resident on its second LoadModel")

    started = time.perf_counter()
    unloaded = await client.unload_model(model, force=force)
    unload_ms = (time.perf_counter() - started) * 1000
    if info.resident or info.is_default:
        await client.load_model(model, pin=info.pinned)
    resident = summary(resident_ms)
    return {
        "cold_load_ms": round(loaded.load_ms, 1),
        "cold_load_rpc_ms": round(cold_rpc_ms, 1),
        "resident_load_rpc_ms": resident["p50"],
        "resident_load_rpc_ms_max": resident["max"],
        "unload_ms": round(unload_ms, 1),
        "freed_reported_mb": round(unloaded.freed_bytes / _MB, 1),
        "reference": {
            "inproc_load_ms": round(engine.load_ms, 1),
            "inproc_warmup_ms": round(engine.warmup_ms, 1),
            "inproc_load_warmup_ms": round(engine.load_ms + engine.warmup_ms, 1),
        },
    }


async def _memory_cycle(client: TTSClient, info: pb.ModelInfo) -> dict[str, Any]:
    """RSS around a second load and unload of `info` on a fresh worker (see the docstring)."""
    model = info.id
    force = info.is_default or info.pinned
    if info.resident:  # the default model: its load at start was the first one
        first_mb = info.memory_bytes / _MB
    else:
        before = await _rss(client)
        await client.load_model(model)
        first_mb = (await _rss(client) - before) / _MB
    rss_first = await _rss(client)
    await client.unload_model(model, force=force)
    rss_before = await _rss(client)
    await client.load_model(model)
    rss_loaded = await _rss(client)
    await client.unload_model(model, force=force)
    rss_unloaded = await _rss(client)
    grown = (rss_loaded - rss_before) / _MB
    returned = (rss_loaded - rss_unloaded) / _MB
    # A reload into memory the allocator kept may grow RSS by almost nothing: then the first
    # load's growth (an upper bound: it includes the libraries) is the model's size.
    basis = grown if grown >= _MIN_MEASURABLE_MB else first_mb
    return {
        "first_load_rss_mb": round(first_mb, 1),
        "first_unload_returned_mb": round((rss_first - rss_before) / _MB, 1),
        "rss_before_mb": _mb(rss_before),
        "rss_loaded_mb": _mb(rss_loaded),
        "rss_unloaded_mb": _mb(rss_unloaded),
        "model_rss_mb": round(grown, 1),
        "rss_returned_mb": round(returned, 1),
        "memory_returned_pct": (
            round(100 * returned / basis, 1) if basis >= _MIN_MEASURABLE_MB else None
        ),
    }


async def _fresh_worker(ctx: BenchContext, models: tuple[str, ...]) -> dict[str, Any]:
    args = [
        "--ttl-ms",
        str(TTL_MS),
        "--min-residency-ms",
        "0",
        "--evict-check-interval-ms",
        "200",
    ]
    proc = await ctx.start_worker(args)
    memory: dict[str, Any] = {}
    observed: float | None = None
    try:
        async with TTSClient(proc.addr, api_key=ctx.api_key) as client:
            idle_rss = await _rss(client)
            infos = {m.id: m for m in (await client.list_models()).models}
            # non-default models first: the default stays resident while they are measured
            for model in sorted(models, key=lambda m: infos[m].is_default if m in infos else 0):
                ctx.current.step(f"memory of {model}")
                if model in infos:
                    try:
                        memory[model] = await _memory_cycle(client, infos[model])
                    except DuplexError as exc:
                        memory[model] = {"memory_error": str(exc)}
            ctx.current.step("TTL eviction")
            if _TTL_MODEL in infos:
                await client.load_model(_TTL_MODEL)
                observed = await _wait_evicted(client, time.perf_counter())
    finally:
        await ctx.stop_worker(proc)
    return {
        "memory": memory,
        "idle_rss_mb": _mb(idle_rss),
        "ttl_ms": TTL_MS,
        "ttl_evict_observed_ms": observed,
        "ttl_evict_lag_ms": round(observed - TTL_MS, 1) if observed is not None else None,
    }


async def _wait_evicted(client: TTSClient, loaded_at: float) -> float | None:
    while time.perf_counter() - loaded_at < _TTL_TIMEOUT_S:
        listing = await client.list_models()
        model = next(m for m in listing.models if m.id == _TTL_MODEL)
        if not model.resident:
            return round((time.perf_counter() - loaded_at) * 1000, 1)
        await asyncio.sleep(_POLL_S)
    return None


def _mb(value: int) -> float:
    return round(value / _MB, 1)


def rows(result: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for model, r in result.items():
        if not isinstance(r, dict):
            continue
        if "error" in r or "skipped" in r:
            out.append(Row(model, r.get("error") or f"skipped: {r['skipped']}"))
            continue
        ref = r["reference"]
        out += [
            Row(
                f"{model} cold load + warmup",
                f"{r['cold_load_ms']:.0f} ms (RPC {r['cold_load_rpc_ms']:.0f} ms)",
                f"in this process {ref['inproc_load_warmup_ms']:.0f} ms",
                f"load.{model}.cold_load_ms",
            ),
            Row(
                f"{model} LoadModel when resident",
                f"{r['resident_load_rpc_ms']:.2f} ms",
                f"max {r['resident_load_rpc_ms_max']:.2f} ms",
                f"load.{model}.resident_load_rpc_ms",
            ),
            Row(
                f"{model} UnloadModel",
                f"{r['unload_ms']:.1f} ms",
                f"worker reports {r['freed_reported_mb']:.0f} MB freed",
                f"load.{model}.unload_ms",
            ),
        ]
        if "memory_returned_pct" in r:
            pct = r["memory_returned_pct"]
            out.append(
                Row(
                    f"{model} memory returned by unload",
                    f"{pct:.0f} % ({r['rss_returned_mb']:.1f} MB back; the reload grew RSS "
                    f"{r['model_rss_mb']:.1f} MB)"
                    if pct is not None
                    else f"n/a: {r['model_rss_mb']:.0f} MB is below what RSS can show",
                    f"first load in a fresh worker: {r['first_load_rss_mb']:.0f} MB, its "
                    f"unload returned {r['first_unload_returned_mb']:.0f} MB",
                    f"load.{model}.memory_returned_pct",
                )
            )
        elif "memory_error" in r:
            out.append(Row(f"{model} memory returned by unload", f"error: {r['memory_error']}"))
    plw = result.get("piper_load_warmup_ms")
    out.append(
        Row(
            "Piper load + warmup at worker start",
            f"{plw:.0f} ms" if plw is not None else "n/a",
            "",
            "load.piper_load_warmup_ms",
        )
    )
    out.append(
        Row(
            "idle worker RSS (fresh, Piper resident)",
            f"{result['idle_rss_mb']:.0f} MB",
            f"after this run's use {result['idle_rss_after_use_mb']:.0f} MB",
            "load.idle_rss_mb",
        )
    )
    ttl = result.get("ttl_evict_observed_ms")
    out.append(
        Row(
            "TTL eviction observed",
            f"{ttl:.0f} ms" if ttl is not None else "not observed",
            f"TTL {result['ttl_ms']} ms, evictor every 200 ms",
            "load.ttl_evict_observed_ms",
        )
    )
    return out
