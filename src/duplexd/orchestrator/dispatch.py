"""Client messages -> session calls, the same for every transport.

The WebSocket (`ws.py`) and the WebRTC data channel (`webrtc.py`) both hand the client's JSON
control messages (`text`, `llm`, `ping`, `end`, a second `hello`) to one `Dispatcher`, which
calls the `Session` and reports every problem as an `error` event (docs/protocol.md). It also
holds the table of live sessions and decides whether a new one may start: not beyond
`sessions.max`, and not once the orchestrator is going away (SIGTERM: `going_away` is set).
"""

from __future__ import annotations

import time

from duplexd.errors import BusyError, DaemonUnavailable, DuplexError, InvalidArgument
from duplexd.orchestrator.protocol import (
    EndMsg,
    Hello,
    LlmMsg,
    PingMsg,
    TextMsg,
    error_code,
    parse_client_json,
)
from duplexd.orchestrator.session import Session, SessionDeps
from duplexd.orchestrator.transport import Outbox

__all__ = ["GOING_AWAY", "Dispatcher"]

GOING_AWAY = "orchestrator shutting down"  # the reason sessions hear on SIGTERM (<= 123 bytes)


class Dispatcher:
    """One per orchestrator: the live sessions, who may start one, and what clients say."""

    def __init__(self, deps: SessionDeps) -> None:
        self.deps = deps
        self.sessions: dict[str, Session] = {}
        self.going_away: str | None = None  # set when draining: no new sessions

    def admit(self) -> None:
        """Raise unless a new session may start now (going away, or the session limit)."""
        if self.going_away is not None:
            raise DaemonUnavailable(f"{self.going_away}: not accepting new sessions")
        if len(self.sessions) >= self.deps.config.sessions.max:
            raise BusyError("server busy: session limit reached")

    def on_json(self, raw: str, session: Session, outbox: Outbox) -> bool:
        """One client JSON message; False when the client ended the session (`end`)."""
        try:
            msg = parse_client_json(raw)
        except DuplexError as exc:
            self.error(outbox, exc)
            return True
        match msg:
            case TextMsg():
                session.on_text(msg.text)
            case LlmMsg():
                session.on_llm(msg.text, msg.final)
            case PingMsg():
                outbox.event({"type": "pong", "t": msg.t, "server_t": time.time()})
            case EndMsg():
                return False
            case Hello():
                self.error(outbox, InvalidArgument("hello was already received"))
        return True

    def error(
        self, outbox: Outbox, exc: DuplexError, *, fatal: bool = False, code: str | None = None
    ) -> None:
        """An `error` event for the client (counted by code); a fatal one is the session's
        last word and is queued even for a client that fell too far behind."""
        code = code or error_code(exc)
        self.deps.telemetry.c_errors.labels(code).inc()
        event = {"type": "error", "code": code, "message": str(exc), "fatal": fatal}
        outbox.event(event, force=fatal)
