"""What `talk` shows: one live status line, and a line per finished thing above it.

The status line (a rich renderable for `Live`) says what the conversation is doing right now:
listening / speaking / barged-in, the partial transcript while the user speaks, the mic level
and the last turn's latencies. Finished things — what the user said, what the bot said, each
turn's latencies, barge-ins, errors — become permanent lines (`lines_for`), so the scrollback
is a transcript of the conversation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text

__all__ = ["StatusView", "latency_text"]

_STATE_STYLE = {
    "connecting": ("…", "dim"),
    "listening": ("●", "green"),
    "speaking": ("◆", "cyan"),
    "barged_in": ("✋", "yellow"),
}
# (event field, label) in the order a turn's stages happen
_STAGES = (
    ("end_of_speech_ms", "end of speech"),
    ("asr_ms", "ASR"),
    ("llm_first_text_ms", "first LLM text"),
    ("tts_first_audio_ms", "first audio"),
    ("total_ms", "total"),
)


def latency_text(ev: dict[str, Any]) -> str:
    """``end of speech 510 ms · ASR 320 ms · … · total 930 ms`` (unknown stages skipped)."""
    parts = [
        f"{label} {ev[key]:.0f} ms"
        for key, label in _STAGES
        if isinstance(ev.get(key), int | float)
    ]
    return " · ".join(parts)


@dataclass
class StatusView:
    state: str = "connecting"
    partial: str = ""
    reply: str = ""
    latency: str = ""
    mic_dbfs: float | None = None
    warning: str = ""
    turns: int = 0
    notes: list[str] = field(default_factory=list)

    def on_event(self, ev: dict[str, Any]) -> list[Text]:
        """Update the live line from `ev`; return the permanent lines it produces."""
        kind = ev.get("type")
        if kind == "ready":
            self.state = "listening"
        elif kind == "state":
            self.state = str(ev.get("state", self.state))
        elif kind == "transcript" and not ev.get("final"):
            self.partial = str(ev.get("text", ""))
        elif kind == "reply" and not ev.get("final"):
            self.reply = (self.reply + " " + str(ev.get("text", ""))).strip()
        elif kind == "latency":
            self.latency = latency_text(ev)
        elif kind == "turn":
            self.turns += 1
            self.reply = ""
        return self.lines_for(ev)

    def lines_for(self, ev: dict[str, Any]) -> list[Text]:
        kind = ev.get("type")
        if kind == "transcript" and ev.get("final"):
            self.partial = ""
            return [Text.assemble(("you  › ", "bold green"), str(ev.get("text", "")))]
        if kind == "turn" and (said := ev.get("heard", ev.get("reply_text"))):
            # what was heard (the client's `heard`), not all the server sent
            return [Text.assemble(("bot  › ", "bold cyan"), str(said))]
        if kind == "latency":
            label = f"turn {ev.get('turn', '?')}: "
            return [Text.assemble(("       ", ""), (label + latency_text(ev), "dim"))]
        if kind == "bargein":
            ms = ev.get("vad_to_worker_silent_ms")
            said = f" (worker silent {ms:.0f} ms after VAD onset)" if isinstance(ms, float) else ""
            return [Text(f"       barged in{said}", style="yellow")]
        if kind == "error":
            return [Text(f"error: {ev.get('message', '')} [{ev.get('code', '')}]", style="red")]
        return []

    def warn(self, message: str) -> Text:
        self.warning = message
        return Text(f"warning: {message}", style="bold yellow")

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        mark, style = _STATE_STYLE.get(self.state, ("●", "white"))
        line = Text.assemble((f"{mark} {self.state.replace('_', '-')}", f"bold {style}"))
        if self.partial:
            line.append(f"  you: {self.partial}…", style="green")
        elif self.reply and self.state == "speaking":
            line.append(f"  bot: {self.reply[-80:]}", style="cyan")
        if self.mic_dbfs is not None:
            level = "-∞" if self.mic_dbfs == float("-inf") else f"{self.mic_dbfs:.0f}"
            line.append(f"  mic {level} dBFS", style="dim")
        if self.latency:
            line.append(f"  last turn: {self.latency}", style="dim")
        line.truncate(options.max_width, overflow="ellipsis")
        yield line
        if self.warning:
            yield Text(self.warning, style="yellow")
