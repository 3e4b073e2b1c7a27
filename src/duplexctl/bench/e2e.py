"""e2e: end of user speech → first reply audio at the client, by stage, per end-of-turn rule.

The user speaks with a neural voice (Piper en_US-joe-medium, the only Piper voice that installs
from PyPI here, so the same speaker as the bot, a little slower): Smart Turn judges intonation
and is near chance on espeak. Each rule gets its own orchestrator in the same run, in front of
the same worker:

- `smart-turn`: the audio end-of-turn model (`turn.end_of_turn: smart-turn`), speculative
  replies on;
- `silence`: the fixed 500 ms silence rule (`turn.end_of_turn: silence`), the baseline.

Two sets: complete questions in one conversation (the client figure is the end of the
question's last frame → the first reply frame received; stages from the `latency` event), and
the mid-sentence-pause set: a sentence said once, as one sentence, with a 400 ms pause cut
in after a word where it is clearly unfinished (`piper_paused`: the start keeps the
sentence's intonation, as a speaker's who stops to think does), each in a fresh conversation;
a false cut-in is reply audio that arrives before the user finished, and a turn that ended
inside the pause is counted beside it even when its reply was stopped before any audio (the
sentence was split in two turns).
Then 8 sessions speak at once to load the end-of-turn model:
its decision time (features + inference, from the `latency` events) is reported at p95.
"""

from __future__ import annotations

import asyncio
from typing import Any

from duplexctl.bench import Row, Target
from duplexctl.bench._orchestrated import is_kind, orchestrator
from duplexctl.bench.context import BenchContext
from duplexctl.bench.stats import summary
from duplexctl.client.ws import LiveConversation, VoiceClient
from duplexd.devkit.speech import piper_paused, piper_speech

__all__ = ["rows", "run", "targets", "title"]

title = "End to end (speech in → reply audio out), Smart Turn vs fixed silence"
QUESTIONS = ("Hello there!", "What time is it?", "Thank you very much.",
             "What is the weather like today?", "Can you help me with something?")  # fmt: skip
PAUSED = (  # (a start that is clearly unfinished, the rest): one sentence, 400 ms between
    ("I'd like to book a table for", "two people at eight tonight."),
    ("What is the weather like in", "Paris this weekend?"),
    ("Can you tell me about the", "history of the Eiffel Tower?"),
    ("My favourite colour is", "a very dark shade of blue."),
    ("Please remind me to", "call my sister tomorrow morning."),
    ("The train to London leaves at", "half past nine, right?"),
    ("Could you book me a taxi to", "the airport at six?"),
    ("I need a table for", "four on Friday."),
    ("Is it going to", "rain tomorrow in Berlin?"),
    ("Tell me a", "joke about cats."),
    ("What's on my calendar for", "Monday morning?"),
    ("Where is the nearest", "pharmacy that is open now?"),
)
PAUSE_MS = 400
RULES = ("smart-turn", "silence")
STAGES = ("end_of_speech_ms", "asr_ms", "llm_first_text_ms", "tts_first_audio_ms", "total_ms")
LOAD_SESSIONS = 8

targets = [
    Target("e2e-p50", "end of speech → first reply audio p50 ≤ 300 ms (Smart Turn)",
           "e2e.smart-turn.turn_ms.p50", "<=", 300, "ms"),
    Target("e2e-p95", "end of speech → first reply audio p95 ≤ 500 ms (Smart Turn)",
           "e2e.smart-turn.turn_ms.p95", "<=", 500, "ms"),
    Target("e2e-cut-ins", "false cut-ins on mid-sentence pauses ≤ 10 % (Smart Turn)",
           "e2e.smart-turn.false_cut_in_pct", "<=", 10, "%"),
    Target("e2e-eot-p95", f"end-of-turn decision p95 ≤ 60 ms with {LOAD_SESSIONS} sessions",
           "e2e.smart-turn.eot_loaded_ms.p95", "<=", 60, "ms"),
]  # fmt: skip


async def run(ctx: BenchContext) -> dict[str, Any]:
    n = {"full": 10, "quick": 5, "tiny": 2}[ctx.scale.name]
    n_paused = {"full": 12, "quick": 6, "tiny": 2}[ctx.scale.name]
    loaded = {"full": 3, "quick": 2, "tiny": 1}[ctx.scale.name]
    ctx.current.start(len(RULES) * (n + n_paused) + loaded, "turns")
    out: dict[str, Any] = {"user_voice": "piper en_US-joe-medium (length_scale 1.1)"}
    for rule in RULES:
        env = {"DUPLEX_TURN__END_OF_TURN": rule}
        async with orchestrator(ctx, env=env) as addr:
            result = await _questions(ctx, addr, n)
            result.update(await _paused(ctx, addr, n_paused))
            if rule == "smart-turn":
                result["eot_loaded_ms"] = summary(await _loaded(ctx, addr, loaded))
        out[rule] = result
    ctx.current.done()
    return out


async def _questions(ctx: BenchContext, addr: str, n: int) -> dict[str, Any]:
    turn_ms: list[float] = []
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    speculative = discarded = 0
    ended_by: dict[str, int] = {}

    async def script(conv: LiveConversation) -> None:
        nonlocal speculative, discarded
        await conv.sleep_ms(300)
        for turn in range(1, n + 1):
            conv.say(await asyncio.to_thread(piper_speech, QUESTIONS[(turn - 1) % len(QUESTIONS)]))
            await conv.said()
            spoken_end = conv.result.utterances[-1][1]
            latency = await conv.wait_for(is_kind("latency", turn=turn), 30)
            first = await _first_frame(conv, turn)  # right behind the event, in order
            if spoken_end is not None and first is not None:
                turn_ms.append(first - spoken_end)
            for stage in STAGES:
                if latency.get(stage) is not None:
                    stages[stage].append(latency[stage])
            by = str(latency.get("end_of_turn"))
            ended_by[by] = ended_by.get(by, 0) + 1
            speculative += bool(latency.get("speculative"))
            discarded += int(latency.get("speculations_discarded") or 0)
            await conv.wait_for(is_kind("turn", turn=turn), 60)
            await conv.sleep_ms(400)
            ctx.current.step()

    async with VoiceClient(addr, {}) as client:
        await LiveConversation(client).run(script)
    return {
        "turns": len(turn_ms),
        "turn_ms": summary(turn_ms),
        "stages": {stage.removesuffix("_ms"): summary(v) for stage, v in stages.items()},
        "speculative_turns": speculative,
        "speculations_discarded": discarded,
        "ended_by": ended_by,
    }


async def _paused(ctx: BenchContext, addr: str, n: int) -> dict[str, Any]:
    cut_ins = early_ends = 0
    split: list[dict[str, Any]] = []  # the sentences whose turn ended inside the pause
    for i in range(n):
        start, rest = PAUSED[i % len(PAUSED)]
        pcm = await asyncio.to_thread(piper_paused, start, rest, PAUSE_MS)

        async def script(conv: LiveConversation, pcm: Any = pcm) -> None:
            await conv.sleep_ms(300)
            conv.say(pcm)
            await conv.said()
            await conv.wait_for(is_kind("turn"), 30)

        async with VoiceClient(addr, {}) as client:
            result = await LiveConversation(client).run(script)
        spoken_end = result.utterances[-1][1] if result.utterances else None
        early = [t for t, _ in result.audio_log if spoken_end is not None and t < spoken_end]
        cut_ins += bool(early)
        # the turn ended inside the pause (a final transcript before the user finished), even
        # if its reply was stopped before any audio: the sentence was split in two turns
        heard = [e.get("text") for e in result.events if e["type"] == "transcript" and
                 e.get("final") and spoken_end is not None and e["t_ms"] < spoken_end]  # fmt: skip
        early_ends += bool(heard)
        if heard:
            split.append({"said": start, "heard": heard[0], "cut_in": bool(early)})
        ctx.current.step()
    return {
        "paused": n, "false_cut_ins": cut_ins, "false_cut_in_pct": round(100 * cut_ins / n, 1),
        "ended_early": early_ends, "ended_early_pct": round(100 * early_ends / n, 1),
        "split": split,
    }  # fmt: skip


async def _loaded(ctx: BenchContext, addr: str, rounds: int) -> list[float]:
    """LOAD_SESSIONS conversations at once, `rounds` questions each: end-of-turn model ms."""
    decisions: list[float] = []

    async def one(k: int) -> None:
        async def script(conv: LiveConversation) -> None:
            await conv.sleep_ms(100 + 150 * k)  # staggered, as real callers are
            for turn in range(1, rounds + 1):
                text = QUESTIONS[(k + turn) % len(QUESTIONS)]
                conv.say(await asyncio.to_thread(piper_speech, text))
                await conv.said()
                latency = await conv.wait_for(is_kind("latency", turn=turn), 60)
                if isinstance(latency.get("eot_model_ms"), int | float):
                    decisions.append(float(latency["eot_model_ms"]))
                await conv.wait_for(is_kind("turn", turn=turn), 90)

        async with VoiceClient(addr, {}) as client:
            await LiveConversation(client).run(script)

    await asyncio.gather(*(one(k) for k in range(LOAD_SESSIONS)))
    ctx.current.step(n=rounds)
    return decisions


async def _first_frame(conv: LiveConversation, turn: int, timeout_ms: int = 2000) -> float | None:
    for _ in range(timeout_ms // 10):
        arrived = [t for t, k in conv.result.audio_log if k == turn]
        if arrived:
            return arrived[0]
        await conv.sleep_ms(10)
    return None


def rows(result: dict[str, Any]) -> list[Row]:
    out = [Row("user voice", str(result.get("user_voice", "")))]
    labels = {
        "end_of_speech": "  endpoint wait (end-of-turn decision)",
        "asr": "  + ASR after the endpoint",
        "llm_first_text": "  + first reply text",
        "tts_first_audio": "  + first reply audio",
        "total": "  = server total",
    }
    for rule in RULES:
        r = result.get(rule)
        if not r:
            continue
        t = r["turn_ms"]
        label = f"[{rule}] end of speech → first reply audio (client, {r['turns']} turns)"
        value = f"p50 {t['p50']} · p95 {t['p95']} ms"
        out.append(Row(label, value, key=f"e2e.{rule}.turn_ms.p50"))
        for stage, label in labels.items():
            s = r["stages"][stage]
            out.append(Row(label, f"p50 {s['p50']} · p95 {s['p95']} ms"))
        out.append(Row(f"[{rule}] false cut-ins, mid-sentence {PAUSE_MS} ms pauses",
                       f"{r['false_cut_ins']}/{r['paused']} ({r['false_cut_in_pct']} %)",
                       key=f"e2e.{rule}.false_cut_in_pct"))  # fmt: skip
        if "ended_early" in r:
            split = f"{r['ended_early']}/{r['paused']} ({r['ended_early_pct']} %)"
            out.append(Row(f"[{rule}]   turns ended inside the pause (heard or not)", split))
        out.append(Row(f"[{rule}] speculative replies used / discarded",
                       f"{r['speculative_turns']} / {r['speculations_discarded']}"))  # fmt: skip
        if r.get("ended_by"):
            ends = ", ".join(f"{by} {n}" for by, n in sorted(r["ended_by"].items()))
            out.append(Row(f"[{rule}] turns ended by", ends))
        if "eot_loaded_ms" in r:
            e = r["eot_loaded_ms"]
            out.append(Row(f"[{rule}] end-of-turn decision, {LOAD_SESSIONS} sessions",
                           f"p50 {e['p50']} · p95 {e['p95']} ms",
                           key=f"e2e.{rule}.eot_loaded_ms.p95"))  # fmt: skip
    return out
