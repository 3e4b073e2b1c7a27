"""Logs: the daemons' JSON logs, merged as they arrive, filtered by words and level."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.widgets import Input, RichLog

from duplexctl.tui.views import LogLine, Snapshot
from duplexctl.tui.widgets.format import LEVELS, FormattedLog, format_log
from duplexctl.tui.widgets.panel import Panel

__all__ = ["LogFilter", "LogPane"]


@dataclass(frozen=True)
class LogFilter:
    """``level:warning`` keeps warnings and worse; every other word must appear (any case)."""

    words: tuple[str, ...] = ()
    min_level: int = 0

    @classmethod
    def parse(cls, text: str) -> LogFilter:
        words, min_level = [], 0
        for token in text.lower().split():
            name = token.removeprefix("level:")
            if name != token:
                levels = [v for k, v in LEVELS.items() if k.startswith(name)] if name else []
                min_level = levels[0] if levels else min_level
            else:
                words.append(token)
        return cls(tuple(words), min_level)

    def accepts(self, line: FormattedLog) -> bool:
        if LEVELS.get(line.level, LEVELS["info"]) < self.min_level:
            return False
        plain = line.plain.lower()
        return all(w in plain for w in self.words)


class LogPane(Panel):
    BORDER_TITLE = "Logs"

    DEFAULT_CSS = """
    LogPane { height: 1fr; min-height: 6; }
    LogPane #log-filter { border: none; height: 1; padding: 0; margin-bottom: 1; }
    LogPane RichLog { height: 1fr; background: $surface; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._lines: tuple[LogLine, ...] = ()
        self._last_seq = 0
        self._filter = LogFilter()

    def compose(self) -> ComposeResult:
        yield Input(
            placeholder="filter: words…  level:warning  (press / to jump here)", id="log-filter"
        )
        yield RichLog(max_lines=1000, wrap=False, markup=False, auto_scroll=True)

    def show(self, snapshot: Snapshot, now: float) -> None:
        new = [line for line in snapshot.logs if line.seq > self._last_seq]
        self._lines = snapshot.logs
        if new:
            self._last_seq = new[-1].seq
            self._write(new)
        files = len({line.daemon for line in snapshot.logs})
        self.set_subtitle(
            f"{files} daemon log{'s' if files != 1 else ''}"
            if files
            else "no log files: daemons started by `duplexctl up` log to its state dir"
        )

    @on(Input.Changed, "#log-filter")
    def _refilter(self, event: Input.Changed) -> None:
        self._filter = LogFilter.parse(event.value)
        self.query_one(RichLog).clear()
        self._write(self._lines)

    def _write(self, lines: Iterable[LogLine]) -> None:
        log = self.query_one(RichLog)
        for line in lines:
            shown = format_log(line.daemon, line.raw)
            if self._filter.accepts(shown):
                log.write(shown.text)
