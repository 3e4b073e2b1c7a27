"""Daemon log files: which exist, their last lines, and following one like ``tail -f``."""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from duplexctl.supervise.state import StateStore

__all__ = ["follow", "log_files", "read_log"]

SUPERVISOR = "supervisor"


def log_files(store: StateStore) -> dict[str, Path]:
    """Name -> log file for every daemon that has one, plus the detached supervisor's."""
    found = {p.name.removesuffix(".log"): p for p in sorted(store.logs_dir.glob("*.log"))}
    if store.supervisor_log.exists():
        found[SUPERVISOR] = store.supervisor_log
    return found


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
    """New text appended after `offset`, as it arrives; starts over if the file is truncated."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # chunks split characters
    while not stop():
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size < offset:
            offset = 0  # truncated or replaced
        if size > offset:
            with path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read(size - offset)
            offset += len(chunk)
            yield decoder.decode(chunk)
        else:
            time.sleep(poll_s)
