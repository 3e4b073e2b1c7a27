"""How `duplexctl logs` prints a daemon's JSON log lines: one readable line each.

    06:16:04.394 INFO  tts.worker   model loaded  model=espeak-en load_ms=27.2

Time is local, ``HH:MM:SS.mmm``, whatever the line carried (ISO UTC from the daemons, unix
seconds from older markers); a line with the date goes before the first line and whenever the
day changes. Level, component (``duplexd.`` dropped), event, then the other keys as
``key=value`` (values with spaces quoted). The supervisor's run markers read as rules
(``──── supervisor: restart #1 ────``). A line that is not JSON (a traceback a daemon wrote
to stderr) is printed as it is. Standard library and rich only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from rich.text import Text

__all__ = ["LogFormatter", "local_time"]

_HIDDEN = {"event", "level", "timestamp", "process", "logger", "component", "daemon"}
_LEVELS = {"warning": "WARN", "critical": "CRIT", "exception": "ERROR"}
_LEVEL_STYLES = {"debug": "dim", "warning": "yellow", "error": "bold red", "critical": "bold red"}
_MULTILINE = ("exception", "stack", "traceback")


def local_time(stamp: object) -> datetime | None:
    """A log line's time (ISO text, with or without zone, or unix seconds) in local time."""
    try:
        if isinstance(stamp, int | float):
            return datetime.fromtimestamp(stamp).astimezone()
        moment = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except (ValueError, OSError, OverflowError):
        return None
    return moment.astimezone() if moment.tzinfo else moment  # naive: taken as written


@dataclass
class LogFormatter:
    """Formats one log's lines in order (it remembers the day, to print a date line)."""

    day: date | None = None

    def format(self, raw: str) -> list[Text]:
        """The lines to print for one raw log line: maybe a date line, then the line itself
        (and an exception's traceback under it)."""
        raw = raw.rstrip("\n")
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return [Text(raw, style="dim")] if raw.strip() else []
        out: list[Text] = []
        moment = local_time(data.get("timestamp"))
        if moment is not None and moment.date() != self.day:
            self.day = moment.date()
            out.append(Text(f"── {moment:%Y-%m-%d %Z}".rstrip(), style="dim"))
        clock = f"{moment:%H:%M:%S}.{moment.microsecond // 1000:03d}" if moment else "--:--:--.---"
        event = str(data.get("event", ""))
        if event.startswith("supervisor: "):
            daemon = data.get("daemon")
            rule = f"──── {event}{f' ({daemon})' if daemon else ''} ────"
            out.append(Text(f"{clock} {rule}", style="bold cyan"))
            return out
        level = str(data.get("level", "info")).lower()
        line = Text()
        line.append(f"{clock} ", style="dim")
        line.append(f"{_LEVELS.get(level, level.upper()):<5} ", style=_LEVEL_STYLES.get(level, ""))
        component = _component(data)
        if component:
            line.append(f"{component:<12} ", style="cyan")
        line.append(event, style="bold" if level in ("warning", "error", "critical") else "")
        fields = " ".join(
            f"{key}={_value(value)}"
            for key, value in data.items()
            if key not in _HIDDEN and not (key in _MULTILINE and isinstance(value, str))
        )
        if fields:
            line.append(f"  {fields}", style="dim")
        out.append(line)
        for key in _MULTILINE:
            if isinstance(data.get(key), str):
                out += [Text(f"    {part}", style="red") for part in data[key].splitlines()]
        return out


def _component(data: dict[str, Any]) -> str:
    name = str(data.get("component") or data.get("logger") or data.get("process") or "")
    return name.removeprefix("duplexd.")


def _value(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False) if (" " in value or not value) else value
    return json.dumps(value, ensure_ascii=False, default=str)
