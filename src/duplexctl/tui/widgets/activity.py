"""A one-line strip with a spinner while model or daemon actions are in flight."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, LoadingIndicator

__all__ = ["ActivityBar"]


class ActivityBar(Horizontal):
    DEFAULT_CSS = """
    ActivityBar { height: 1; display: none; background: $boost; }
    ActivityBar.-busy { display: block; }
    ActivityBar LoadingIndicator { width: 6; height: 1; min-height: 1; background: transparent; }
    ActivityBar Label { width: 1fr; color: $text-warning; }
    """

    def compose(self) -> ComposeResult:
        yield Label()

    def show(self, tasks: Sequence[str]) -> None:
        """Describe what is running; hidden when nothing is.

        The spinner is mounted only while busy: an idle dashboard keeps no animation timer.
        """
        busy = bool(tasks)
        self.set_class(busy, "-busy")
        self.query_one(Label).update(" · ".join(tasks))
        spinners = self.query(LoadingIndicator)
        if busy and not spinners:
            self.mount(LoadingIndicator(), before=0)
        elif not busy:
            spinners.remove()
