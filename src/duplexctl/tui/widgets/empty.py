"""What the dashboard shows when no daemon is known: how to start one, and a button to."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Center, Vertical
from textual.message import Message
from textual.widgets import Button, Static

__all__ = ["NothingRunning"]

_TEXT = """\
[b]Nothing is running.[/b]

Start the embedded default (one orchestrator + one worker, CPU only):

  [b]duplexctl up[/b]             in a terminal of its own (Ctrl-C stops it), or
  [b]duplexctl up --detach[/b]    in the background: press [b]s[/b] or the button below

Or watch daemons started elsewhere:

  [b]duplexctl dash --worker HOST:PORT --orchestrator HOST:PORT[/b]"""


class NothingRunning(Vertical):
    DEFAULT_CSS = """
    NothingRunning { align: center middle; height: 1fr; display: none; }
    NothingRunning #how { width: auto; padding: 1 2; border: round $primary 50%; }
    NothingRunning Center { height: auto; }
    NothingRunning #start { margin-top: 1; }
    """

    class StartRequested(Message):
        """The operator asked to run `duplexctl up --detach`."""

    def compose(self) -> ComposeResult:
        with Center():
            yield Static(_TEXT, id="how")
        with Center():
            yield Button(
                "Start in the background  (duplexctl up --detach)", id="start", variant="primary"
            )

    @on(Button.Pressed, "#start")
    def _start(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.StartRequested())
