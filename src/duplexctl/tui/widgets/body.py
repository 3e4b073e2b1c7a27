"""`Body`: a Static for panel contents that are redrawn on every poll.

A plain ``Static.update`` asks for a layout pass of the whole screen, twice a second for every
panel; that was most of the dashboard's CPU time. The panels draw each line no-wrap, so their
height depends only on a few counts (workers, models, turns): a `Body` asks for a layout only
when that `shape` changes, and skips the update when nothing visible did.
"""

from __future__ import annotations

from collections.abc import Hashable

from rich.console import RenderableType
from textual.widgets import Static

__all__ = ["Body"]


class Body(Static):
    DEFAULT_CSS = """
    Body { height: auto; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._shape: Hashable = None
        self._key: Hashable = None

    def show(self, content: RenderableType, *, shape: Hashable, key: Hashable = None) -> None:
        """Draw `content`; `shape` decides the height, `key` (when given) what is visible."""
        if key is not None and key == self._key and shape == self._shape:
            return
        layout = shape != self._shape
        self._shape, self._key = shape, key
        self.update(content, layout=layout)
