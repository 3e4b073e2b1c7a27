"""e2e: end of user speech → first reply audio at the client, by stage.

Short spoken questions in one conversation, each after the previous reply ended. The client
figure is the send time of the end of the question's last frame → the first reply frame
received; the stages come from the server's `latency` event (endpoint wait, ASR, LLM, TTS).
"""

from __future__ import annotations

from typing import Any

from duplexctl.bench import Row, Target
from duplexctl.bench._orchestrated import is_kind, orchestrator
from duplexctl.bench.context import BenchContext
from duplexctl.bench.stats import summary
from duplexctl.client.ws import LiveConversation, VoiceClient
from duplexd.devkit.speech import speech

__all__ = ["rows", "run", "targets", "title"]

title = "End to end (speech in → reply audio out)"
QUESTIONS = ("hello there", "what time is it", "thank you", "what is the weather like")
STAGES = ("end_of_speech_ms", "asr_ms", "llm_first_text_ms", "tts_first_audio_ms", "total_ms")

targets = [
    Target("e2e-p50", "end of speech → first reply audio p50 ≤ 350 ms", "e2e.turn_ms.p50",
           "<=", 350, "ms"),
    Target("e2e-p95", "end of speech → first reply audio p95 ≤ 500 ms", "e2e.turn_ms.p95",
           "<=", 500, "ms"),
]  # fmt: skip


async def run(ctx: BenchContext) -> dict[str, Any]:
    n = {"full": 12, "quick": 5, "tiny": 2}[ctx.scale.name]
    ctx.current.start(n, "turns")
    turn_ms: list[float] = []
    stages: dict[str, list[float]] = {s: [] for s in STAGES}

    async def script(conv: LiveConversation) -> None:
        await conv.sleep_ms(300)
        for turn in range(1, n + 1):
            conv.say(speech(QUESTIONS[(turn - 1) % len(QUESTIONS)]))
            await conv.said()
            spoken_end = conv.result.utterances[-1][1]
            latency = await conv.wait_for(is_kind("latency", turn=turn), 30)
            first = await _first_frame(conv, turn)  # right behind the event, in order
            if spoken_end is not None and first is not None:
                turn_ms.append(first - spoken_end)
            for stage in STAGES:
                if latency.get(stage) is not None:
                    stages[stage].append(latency[stage])
            await conv.wait_for(is_kind("turn", turn=turn), 60)
            await conv.sleep_ms(400)
            ctx.current.step()

    async with orchestrator(ctx) as addr, VoiceClient(addr, {}) as client:
        await LiveConversation(client).run(script)
    ctx.current.done()
    return {
        "turns": len(turn_ms),
        "turn_ms": summary(turn_ms),
        "stages": {stage.removesuffix("_ms"): summary(v) for stage, v in stages.items()},
    }


async def _first_frame(conv: LiveConversation, turn: int, timeout_ms: int = 2000) -> float | None:
    for _ in range(timeout_ms // 10):
        arrived = [t for t, k in conv.result.audio_log if k == turn]
        if arrived:
            return arrived[0]
        await conv.sleep_ms(10)
    return None


def rows(result: dict[str, Any]) -> list[Row]:
    t = result["turn_ms"]
    out = [
        Row("turns", str(result["turns"])),
        Row("end of speech → first reply audio (client)", f"p50 {t['p50']} · p95 {t['p95']} ms",
            key="e2e.turn_ms.p50"),
    ]  # fmt: skip
    labels = {
        "end_of_speech": "  endpoint wait (silence to end the turn)",
        "asr": "  + ASR after the endpoint",
        "llm_first_text": "  + first reply text",
        "tts_first_audio": "  + first reply audio",
        "total": "  = server total",
    }
    for stage, label in labels.items():
        s = result["stages"][stage]
        out.append(Row(label, f"p50 {s['p50']} · p95 {s['p95']} ms"))
    return out
