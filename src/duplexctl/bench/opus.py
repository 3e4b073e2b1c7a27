"""opus: what Opus on the client link costs and saves, on real speech (the Piper voice).

Encodes and decodes 20 ms 48 kHz frames of the worker's own speech with PyAV's libopus, as
the WebSocket link does, and reports bytes per second next to PCM's (the same-run
reference) and the CPU time per frame and per second of audio (the added CPU).
"""

from __future__ import annotations

import time
from typing import Any

from duplexctl.bench import Row, SuiteUnavailable, Target
from duplexctl.bench.context import BenchContext
from duplexctl.bench.stats import summary
from duplexd.audio.frames import FRAME_BYTES, FRAME_MS

__all__ = ["rows", "run", "targets", "title"]

title = "Opus on the client link"
TEXT = (
    "Opus squeezes each twenty millisecond frame of speech into a small packet, "
    "so a phone on a slow network still hears the reply in real time."
)

targets = [
    Target("opus-cpu", "Opus encode + decode p95 ≤ 0.5 ms per 20 ms frame",
           "opus.codec_ms_per_frame.p95", "<=", 0.5, "ms"),
]  # fmt: skip


async def run(ctx: BenchContext) -> dict[str, Any]:
    from duplexd.audio.opus import OpusDecoder, OpusEncoder, opus_available

    if not opus_available():
        raise SuiteUnavailable("PyAV has no libopus here")
    engine = await ctx.engine("piper-en-us-joe")
    frames = [f for batch in engine.adapter.frame_batches(TEXT) for f in batch]
    repeats = {"full": 5, "quick": 2, "tiny": 1}[ctx.scale.name]
    ctx.current.start(repeats, "passes over the speech")
    per_frame: list[float] = []
    packet_bytes = 0
    for _ in range(repeats):
        enc, dec = OpusEncoder(), OpusDecoder()
        for frame in frames:
            started = time.perf_counter()
            packet = enc.encode(frame)
            decoded = dec.decode_frame(packet)
            per_frame.append((time.perf_counter() - started) * 1000)
            packet_bytes += len(packet)
            assert len(decoded) == FRAME_BYTES
        ctx.current.step()
    ctx.current.done()
    n = len(per_frame)
    seconds = n * FRAME_MS / 1000
    return {
        "frames": n,
        "codec_ms_per_frame": summary(per_frame, digits=3),
        "cpu_ms_per_audio_s": round(sum(per_frame) / seconds, 2),
        "bytes_per_s": round(packet_bytes / seconds),
        "pcm_bytes_per_s": round(FRAME_BYTES * 1000 / FRAME_MS),
        "ratio": round(packet_bytes / (n * FRAME_BYTES), 4),
    }


def rows(result: dict[str, Any]) -> list[Row]:
    c = result["codec_ms_per_frame"]
    return [
        Row("encode + decode per 20 ms frame", f"p50 {c['p50']} · p95 {c['p95']} ms",
            f"{result['frames']} frames of Piper speech", key="opus.codec_ms_per_frame.p95"),
        Row("added CPU", f"{result['cpu_ms_per_audio_s']} ms per second of audio"),
        Row("bytes per second", f"{result['bytes_per_s']:,}",
            f"PCM {result['pcm_bytes_per_s']:,} (×{result['ratio']})"),
    ]  # fmt: skip
