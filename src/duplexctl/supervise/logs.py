"""Daemon log files: which exist, their lines, where the current run starts, following one.

Each daemon's log is one file for all its runs: the supervisor appends a marker line (a JSON
line whose event is ``supervisor: starting``, or ``supervisor: restart #N``) before each
process it starts (`duplexctl.supervise.proc`). The *current run* is what follows the last
``supervisor: starting``: the latest `duplexctl up`, its restarts included (a crash's last
words stay next to the restart they caused).
"""

from __future__ import annotations

import codecs
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from duplexctl.supervise.state import StateStore

__all__ = [
    "STARTING",
    "current_run_start",
    "follow",
    "follow_lines",
    "log_files",
    "marker_line",
    "read_log",
]

SUPERVISOR = "supervisor"
STARTING = "supervisor: starting"
_STARTING_BYTES = json.dumps(STARTING).encode()  # as it appears inside the marker's JSON


def marker_line(daemon: str, restarts: int) -> bytes:
    """The marker the supervisor writes before starting `daemon` (run `restarts` + 1): a log
    line like the daemons' own (structlog's keys, ISO UTC time)."""
    event = STARTING if restarts == 0 else f"supervisor: restart #{restarts}"
    line = {
        "event": event,
        "daemon": daemon,
        "component": "duplexctl.supervise",
        "level": "info",
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    return (json.dumps(line) + "\n").encode()


def log_files(store: StateStore) -> dict[str, Path]:
    """Name -> log file for every daemon that has one, plus the detached supervisor's."""
    found = {p.name.removesuffix(".log"): p for p in sorted(store.logs_dir.glob("*.log"))}
    if store.supervisor_log.exists():
        found[SUPERVISOR] = store.supervisor_log
    return found


def current_run_start(data: bytes) -> int:
    """Where the current run's lines begin in `data` (whole lines of a log): at its last
    ``supervisor: starting`` marker line, else 0."""
    at = data.rfind(_STARTING_BYTES)
    while at >= 0:
        start = data.rfind(b"\n", 0, at) + 1
        end = data.find(b"\n", at)
        line = data[start : end if end >= 0 else len(data)]
        try:
            if json.loads(line).get("event") == STARTING:
                return start
        except (ValueError, AttributeError):
            pass  # the words inside some other line (a message quoting them)
        at = data.rfind(_STARTING_BYTES, 0, start)
    return 0


def read_log(path: Path, lines: int | None = None) -> tuple[str, int]:
    """The file's text (its last `lines` lines if given) and the offset it was read up to."""
    data = path.read_bytes()
    text = data.decode(errors="replace")
    if lines is not None:
        kept = text.splitlines(keepends=True)[-lines:] if lines > 0 else []
        text = "".join(kept)
    return text, len(data)


def follow(
    path: Path, offset: int, *, poll_s: float = 0.2, stop: Callable[[], bool] = lambda: False
) -> Iterator[str]:
    """New text appended after `offset`, as it arrives, across the daemon's restarts (they
    append to the file); starts over when the file is truncated or replaced (a new inode,
    e.g. a cleared state directory), and waits while it does not exist."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # chunks split characters
    inode = _inode(path)
    while not stop():
        try:
            st = path.stat()
        except FileNotFoundError:
            time.sleep(poll_s)
            continue
        if st.st_ino != inode or st.st_size < offset:
            inode, offset = st.st_ino, 0  # replaced or truncated: read the new file whole
            decoder.reset()
        if st.st_size > offset:
            with path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read(st.st_size - offset)
            offset += len(chunk)
            yield decoder.decode(chunk)
        else:
            time.sleep(poll_s)


def follow_lines(
    path: Path, offset: int, *, poll_s: float = 0.2, stop: Callable[[], bool] = lambda: False
) -> Iterator[str]:
    """`follow`, one whole line at a time (without its newline); a half-written last line
    waits for the rest."""
    pending = ""
    for chunk in follow(path, offset, poll_s=poll_s, stop=stop):
        pending += chunk
        *lines, pending = pending.split("\n")
        yield from lines


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None
