"""Text and small renderables the panels share: times, bars, sparklines, log lines.

`Bar` and `Spark` are Rich renderables that fill whatever width they are given, so a panel
lays them out in a grid column and never computes widths itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.text import Text

from duplexctl.format import duration

__all__ = [
    "LEVELS",
    "PALETTE",
    "Bar",
    "FormattedLog",
    "Spark",
    "Tail",
    "ago",
    "countdown",
    "format_log",
    "ms",
]

# Distinct colours for stacked segments (models in the memory bar, stages in a turn bar).
PALETTE = ("dodger_blue1", "medium_purple1", "dark_orange", "spring_green2", "gold1", "hot_pink")
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_LEVEL_STYLES = {"debug": "dim", "warning": "yellow", "error": "bold red", "critical": "bold red"}
_BLOCKS = " ▁▂▃▄▅▆▇█"


def ago(moment: float, now: float) -> str:
    return f"{duration(now - moment)} ago" if moment > 0 else "never"


def countdown(ms_left: float) -> str:
    """m:ss left of a TTL; "—" when the model is not subject to one."""
    if ms_left < 0:
        return "—"
    secs = int(ms_left // 1000)
    return f"{secs // 60}:{secs % 60:02d}"


def ms(value: float) -> str:
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


@dataclass(frozen=True)
class Bar:
    """A horizontal bar of coloured segments, `scale` wide in value terms.

    A non-zero segment always gets at least one cell, so a 100 MiB model stays visible in a
    bar of 32 GiB of RAM; the rest of the width is filled with `fill`.
    """

    segments: Sequence[tuple[float, str]]
    scale: float
    fill: str = "grey23"

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.render(options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(8, options.max_width)

    def render(self, width: int) -> Text:
        text, used = Text(no_wrap=True, overflow="crop"), 0
        for value, style in self.segments:
            if value <= 0 or self.scale <= 0:
                continue
            cells = max(1, round(value / self.scale * width))
            cells = min(cells, width - used)
            text.append("█" * cells, style=style)
            used += cells
        text.append(("█" if self.fill else " ") * (width - used), style=self.fill)
        return text


@dataclass(frozen=True)
class Spark:
    """A one-line sparkline of the last values that fit, scaled to their maximum."""

    values: Sequence[float]
    style: str = "cyan"

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.render(options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(8, options.max_width)

    def render(self, width: int) -> Text:
        shown = list(self.values)[-width:]
        top = max(shown, default=0.0)
        levels = len(_BLOCKS) - 1
        blocks = "".join(_BLOCKS[round(v / top * levels)] if top > 0 else _BLOCKS[0] for v in shown)
        return Text(blocks.rjust(width, " "), style=self.style, no_wrap=True)


@dataclass(frozen=True)
class Tail:
    """The end of a text, cut at the start ("…newest words") to fit its width on one line."""

    text: str
    style: str = ""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.render(options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(min(len(self.text), 8), max(len(self.text), 1))

    def render(self, width: int) -> Text:
        shown = self.text if len(self.text) <= width else "…" + self.text[-(width - 1) :]
        return Text(shown, style=self.style, no_wrap=True, overflow="crop")


@dataclass(frozen=True)
class FormattedLog:
    level: str
    text: Text

    @property
    def plain(self) -> str:
        return self.text.plain


_HIDDEN = {"event", "level", "timestamp", "process", "logger", "component"}


def format_log(daemon: str, raw: str) -> FormattedLog:
    """A JSON log line as ``HH:MM:SS LEVEL daemon  event  key=value …``; others as written."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return FormattedLog("info", Text(f"{daemon}  {raw.rstrip()}", no_wrap=True))
    level = str(data.get("level", "info")).lower()
    text = Text(no_wrap=True)
    text.append(f"{_clock(data.get('timestamp'))} ", style="dim")
    text.append(f"{level.upper():<7} ", style=_LEVEL_STYLES.get(level, "green"))
    if daemon:
        text.append(f"{daemon}  ", style="bold")
    text.append(str(data.get("event", "")))
    fields = _fields(data.items())
    if fields:
        text.append(f"  {fields}", style="dim")
    return FormattedLog(level, text)


def _fields(items: Iterable[tuple[str, object]]) -> str:
    return " ".join(f"{k}={v}" for k, v in items if k not in _HIDDEN)


def _clock(stamp: object) -> str:
    """Local wall-clock time of a log line (ISO or unix timestamp)."""
    try:
        if isinstance(stamp, int | float):
            moment = datetime.fromtimestamp(stamp)
        else:
            moment = datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).astimezone()
    except (ValueError, OSError):
        return "--:--:--"
    return moment.strftime("%H:%M:%S")
