"""Print the demo conversation as it happens: who said what, and each barge-in.

The bot's lines are what the speaker played (`heard`, one per clause, once it is over, at the
time it started playing): a clause cut by a barge-in shows the words that played and `⟂`.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape

__all__ = ["EventPrinter"]


class EventPrinter:
    def __init__(self, console: Console) -> None:
        self.console = console

    def heard(self, t_ms: float, text: str) -> None:
        """A clause of a reply, as it was heard (`LiveConversation`'s `on_heard`)."""
        self.console.print(f"[dim]{t_ms / 1000:6.2f}s[/]  [green]bot[/] › {escape(text)}")

    def __call__(self, ev: dict[str, Any]) -> None:
        t = f"[dim]{ev['t_ms'] / 1000:6.2f}s[/]"
        kind = ev["type"]
        if kind == "transcript" and ev["final"]:
            self.console.print(f"{t}  [cyan]you[/] › {escape(ev['text'])}")
        elif kind == "latency":
            self.console.print(
                f"{t}        [dim]first audio {ev['total_ms']:.0f} ms after you stopped[/]"
            )
        elif kind == "flush":
            self.console.print(
                f"{t}  [magenta]⚡ barge-in[/]: you spoke over the bot; playback flushed"
            )
        elif kind == "bargein":
            self.console.print(
                f"{t}        [dim]worker paused {ev['vad_to_pause_ack_ms']:.1f} ms after the VAD "
                f"onset, silent after {ev['vad_to_worker_silent_ms']:.1f} ms[/]"
            )
        elif kind == "interrupted":
            self.console.print(f"{t}        [dim]words followed: the bot stops and listens[/]")
        elif kind == "resume":
            self.console.print(f"{t}        [dim]no words followed: the bot resumes[/]")
        elif kind == "error":
            self.console.print(f"{t}  [red]error[/] {ev['code']}: {ev['message']}")
