"""How the console writes sizes, durations and URLs: one unit and one style everywhere.

Sizes are binary (KiB, MiB, GiB: "512 MiB", "1.5 GiB") in every command and in the dashboard;
durations have two units at most ("4m05s", "2h03m"); a URL's password never reaches the
terminal. Standard library only: `duplexctl --help` imports this.
"""

from __future__ import annotations

__all__ = ["duration", "human_bytes", "redact_url"]


def human_bytes(n: float, *, empty: str | None = None) -> str:
    """1.2 GiB, 117 MiB, 8.0 MiB, 512 B: three significant figures at most.

    `empty`, when given, is returned instead for a size of zero or less (a "—" cell).
    """
    if empty is not None and n <= 0:
        return empty
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" or n >= 100 else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def duration(seconds: float) -> str:
    """4s, 4m05s, 2h03m, 3d04h: two units at most, like `docker ps`; negative reads as 0s."""
    s = max(int(seconds), 0)
    for size, unit, small, small_size in ((86400, "d", "h", 3600), (3600, "h", "m", 60)):
        if s >= size:
            return f"{s // size}{unit}{(s % size) // small_size:02d}{small}"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (``redis://u:***@host:6379/0``).

    The daemons' own `duplexd.fleet.keys.redact_url`, imported on first use so this module
    stays free of the daemon package at import time.
    """
    from duplexd.fleet.keys import redact_url as redact

    return redact(url)
