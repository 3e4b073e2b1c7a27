"""What the demo prints: per-turn latency and the barge-in figures, against the targets."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from duplexctl.client.ws import Conversation

__all__ = ["TARGETS", "print_report", "summarize"]

# (figure, target ms, where it comes from): the issues' numbers, shown as pass/fail
TARGETS = {
    "vad_to_pause_ack_ms": 25.0,
    "vad_to_worker_silent_ms": 25.0,
    "total_ms": 350.0,
}


def summarize(conv: Conversation) -> dict[str, Any]:
    finals = {e["turn"]: e["text"] for e in conv.of_type("transcript") if e["final"]}
    latency = {e["turn"]: e for e in conv.of_type("latency")}
    turns = []
    for ev in conv.of_type("turn"):
        n = ev["turn"]
        turns.append({
            "turn": n, "user": finals.get(n, ""), "bot": ev.get("heard", ev["reply_text"]),
            "interrupted": ev["interrupted"], **(latency.get(n) or ev["latency"]),
        })  # fmt: skip
    return {
        "turns": turns,
        "bargeins": conv.of_type("bargein"),
        "underruns": conv.underruns,
        "frames_received": conv.frames_received,
    }


def _ms(value: Any) -> str:
    return "—" if value is None else f"{value:.0f}"


def _mark(value: Any, target: float) -> str:
    if value is None:
        return ""
    return "[green]pass[/]" if value <= target else "[yellow]over[/]"


def print_report(console: Console, summary: dict[str, Any]) -> None:
    table = Table(title="Turns (ms from the end of the user's speech)", title_justify="left")
    for col in ("#", "you said", "endpoint", "ASR", "LLM", "TTS", "first audio", ""):
        table.add_column(col, justify="left" if col in ("you said", "") else "right")
    for t in summary["turns"]:
        table.add_row(
            str(t["turn"]), _clip(t["user"]), _ms(t.get("end_of_speech_ms")), _ms(t.get("asr_ms")),
            _ms(t.get("llm_first_text_ms")), _ms(t.get("tts_first_audio_ms")),
            _ms(t.get("total_ms")), "[magenta]interrupted[/]" if t["interrupted"] else "",
        )  # fmt: skip
    console.print(table)
    for b in summary["bargeins"]:
        bt = Table(title=f"Barge-in during turn {b['turn']}", title_justify="left")
        bt.add_column("step")
        bt.add_column("ms", justify="right")
        bt.add_column("target", justify="right")
        bt.add_column("")
        bt.add_row("speech onset → VAD onset", _ms(b["speech_to_vad_ms"]), "", "")
        for key, label in (("vad_to_pause_ack_ms", "VAD onset → worker PAUSE acknowledged"),
                           ("vad_to_worker_silent_ms", "VAD onset → worker silent")):  # fmt: skip
            bt.add_row(label, _ms(b[key]), f"≤ {TARGETS[key]:.0f}", _mark(b[key], TARGETS[key]))
        bt.add_row("VAD onset → client playout flushed", _ms(b["vad_to_client_flush_ms"]), "", "")
        bt.add_row("frames the worker sent after PAUSE", str(b["frames_after_pause"]), "≤ 1", "")
        console.print(bt)
    console.print(
        f"reply audio: {summary['frames_received']} frames of 20 ms, "
        f"{summary['underruns']} playout underruns"
    )


def _clip(text: str, n: int = 34) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
