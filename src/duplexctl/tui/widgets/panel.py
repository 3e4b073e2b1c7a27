"""The base of every dashboard panel: a titled box that shows one `Snapshot` at a time."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.containers import Vertical
from textual.coordinate import Coordinate
from textual.widgets import DataTable

from duplexctl.tui.views import Snapshot

__all__ = ["Panel", "cursor_key", "sync_table"]

Row = tuple[str, Sequence[Text]]


class Panel(Vertical):
    """Subclasses draw `snapshot` in `show`; `now` is the dashboard's clock (frozen in tests)."""

    _subtitle = ""

    DEFAULT_CSS = """
    Panel {
        height: auto;
        border: round $primary 50%;
        border-title-color: $text-primary;
        border-title-style: bold;
        padding: 0 1;
    }
    Panel:focus-within {
        border: round $accent;
    }
    """

    def show(self, snapshot: Snapshot, now: float) -> None:
        raise NotImplementedError

    def set_subtitle(self, text: str) -> None:
        """Set the border subtitle; a repaint only when it changed (it is set every poll)."""
        if text != self._subtitle:
            self._subtitle = text
            self.border_subtitle = text


def sync_table(table: DataTable[Text], rows: Sequence[Row]) -> None:
    """Make `table` show `rows` (key, cells), touching only what changed.

    Rebuilding a table twice a second would reset its cursor and scroll and redraw it all;
    when the row keys are unchanged only changed cells are updated, and on a rebuild the
    cursor stays on the row it was on.
    """
    keys = [key for key, _ in rows]
    if keys != [k.value for k in table.rows]:
        selected = cursor_key(table)
        table.clear()
        for key, cells in rows:
            table.add_row(*cells, key=key)
        if selected in keys:
            table.move_cursor(row=keys.index(selected), animate=False)
        return
    for key, cells in rows:
        for column, cell in zip(table.columns, cells, strict=False):
            if table.get_cell(key, column) != cell:
                table.update_cell(key, column, cell, update_width=True)


def cursor_key(table: DataTable[Text]) -> str | None:
    """The key of the row under the cursor, None for an empty table."""
    if not table.row_count:
        return None
    row = min(table.cursor_row, table.row_count - 1)
    return table.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value
