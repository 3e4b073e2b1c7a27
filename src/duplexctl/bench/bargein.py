"""bargein: how fast the bot stops when you talk over it (design: < 50 ms pause latency).

Trials in one conversation: ask for a story, and 0.6–1.4 s into its audio, ask again over it.
Each barge-in gives, from the client's clock and the server's `bargein` event:
- speech onset → VAD onset (server, from the VAD's own speech start),
- VAD onset → worker PAUSE acknowledged, VAD onset → worker silent (server timestamps),
- speech onset → client output silent: the first interrupting frame sent → the `flush`
  received (the client drops its playout buffer then; later frames of that reply = violations).
"""

from __future__ import annotations

import random
from typing import Any

from duplexctl.bench import Row, Target
from duplexctl.bench._orchestrated import is_kind, orchestrator
from duplexctl.bench.context import BenchContext
from duplexctl.bench.stats import summary
from duplexctl.client.ws import LiveConversation, VoiceClient
from duplexd.devkit.speech import concat, silence, speech

__all__ = ["rows", "run", "targets", "title"]

title = "Barge-in (talking over the bot)"
ASK = "please tell me a story"

targets = [
    Target("pause-design", "VAD onset → PAUSE acknowledged p95 < 50 ms (design)",
           "bargein.pause_ms.p95", "<=", 50, "ms"),
    Target("pause", "VAD onset → worker PAUSE p95 ≤ 25 ms", "bargein.pause_ms.p95", "<=", 25, "ms"),
    Target("silent", "VAD onset → worker silent p95 ≤ 25 ms", "bargein.worker_silent_ms.p95",
           "<=", 25, "ms"),
    Target("client", "speech onset → client silent p95 ≤ 80 ms",
           "bargein.client_silent_ms.p95", "<=", 80, "ms"),
]  # fmt: skip


def _trials(ctx: BenchContext) -> int:
    return {"full": 30, "quick": 10, "tiny": 2}[ctx.scale.name]


async def run(ctx: BenchContext) -> dict[str, Any]:
    n = _trials(ctx)
    ctx.current.start(n, "barge-ins")
    rng = random.Random(7)  # noqa: S311  # jitter for barge-in timing, not cryptography
    figures: list[dict[str, Any]] = []
    client_silent: list[float] = []
    violations = 0
    question = concat(speech(ASK), silence(40))

    async def script(conv: LiveConversation) -> None:
        nonlocal violations
        conv.say(concat(silence(300), question))
        for turn in range(1, n + 1):
            await conv.wait_for(is_kind("latency", turn=turn), 60)  # the story is playing
            await conv.sleep_ms(rng.uniform(600, 1400))
            conv.say(question)  # talk over it
            flush = await conv.wait_for(is_kind("flush", turn=turn), 30)
            barge = await conv.wait_for(is_kind("bargein", turn=turn), 30)
            onset_sent = conv.result.utterances[-1][0]
            client_silent.append(flush["t_ms"] - onset_sent)
            figures.append(barge)
            violations += sum(
                1 for t, k in conv.result.audio_log if k == turn and t > flush["t_ms"]
            )
            ctx.current.step()
        await conv.wait_for(is_kind("latency", turn=n + 1), 60)

    async with orchestrator(ctx) as addr, VoiceClient(addr, {}) as client:
        await LiveConversation(client).run(script)
    ctx.current.done()
    return {
        "trials": len(figures),
        "speech_to_vad_ms": summary(f["speech_to_vad_ms"] for f in figures),
        "pause_ms": summary(f["vad_to_pause_ack_ms"] for f in figures),
        "worker_silent_ms": summary(f["vad_to_worker_silent_ms"] for f in figures),
        "client_silent_ms": summary(client_silent),
        "frames_after_pause": sum(f["frames_after_pause"] for f in figures),
        "frames_after_flush": violations,
    }


def rows(result: dict[str, Any]) -> list[Row]:
    def pct(key: str) -> str:
        s = result[key]
        return f"p50 {s['p50']} · p95 {s['p95']} · max {s['max']} ms"

    return [
        Row("trials", str(result["trials"])),
        Row("speech onset → VAD onset", pct("speech_to_vad_ms")),
        Row("VAD onset → worker PAUSE acknowledged", pct("pause_ms"), key="bargein.pause_ms.p95"),
        Row("VAD onset → worker silent", pct("worker_silent_ms"),
            key="bargein.worker_silent_ms.p95"),
        Row("speech onset → client output silent", pct("client_silent_ms"),
            key="bargein.client_silent_ms.p95"),
        Row("frames sent after PAUSE / after flush",
            f"{result['frames_after_pause']} / {result['frames_after_flush']}"),
    ]  # fmt: skip
