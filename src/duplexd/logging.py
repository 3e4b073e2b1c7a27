"""Structured JSON logs (structlog) with the session id bound through contextvars.

Call `configure_logging()` once per process; `bind_session(session_id)` inside a task makes
every log line the task writes carry ``session_id`` without threading it through calls.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import structlog

__all__ = ["bind_session", "configure_logging", "get_logger", "session_context"]


def configure_logging(
    level: str = "INFO", *, json: bool = True, stream: TextIO | None = None, process: str = ""
) -> None:
    """JSON lines to `stream` (stderr by default); `process` names the daemon in every line."""
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    if process:
        structlog.contextvars.bind_contextvars(process=process)
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level]),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    """A structlog logger; `name` shows as ``component`` in each line (bound lazily, so
    loggers made at import time follow `configure_logging` called later)."""
    # initial values keep the proxy lazy (`.bind()` would freeze today's config); the key is
    # `component` because structlog reserves `logger` for its own argument
    return structlog.get_logger(component=name)


def bind_session(session_id: str) -> None:
    structlog.contextvars.bind_contextvars(session_id=session_id)


@contextmanager
def session_context(session_id: str) -> Iterator[None]:
    """Bind ``session_id`` for the duration of a block (restores the previous value)."""
    tokens = structlog.contextvars.bind_contextvars(session_id=session_id)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
