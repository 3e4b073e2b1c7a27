"""The orchestrator's one port: WebSocket sessions, /healthz, /readyz, /status, /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiohttp import WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from duplexd import __version__
from duplexd.auth import check_key, key_from_metadata
from duplexd.errors import AuthError, DuplexError, InvalidArgument
from duplexd.logging import get_logger, session_context
from duplexd.orchestrator.protocol import EndMsg, Hello, LlmMsg, PingMsg, TextMsg, parse_client_json
from duplexd.orchestrator.session import Session, SessionDeps
from duplexd.orchestrator.transport import Outbox, dumps

__all__ = ["OrchestratorServer", "WsTransport"]

log = get_logger("duplexd.orchestrator.server")

_HELLO_TIMEOUT_S = 10.0
_MAX_BAD_FRAMES_REPORTED = 5  # after this many, malformed frames are counted, not each reported


class WsTransport:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws

    async def send_event(self, event: dict[str, Any]) -> None:
        if not self.ws.closed:
            await self.ws.send_str(dumps(event))

    async def send_audio(self, message: bytes) -> None:
        if not self.ws.closed:
            await self.ws.send_bytes(message)


class OrchestratorServer:
    def __init__(self, deps: SessionDeps) -> None:
        self.deps = deps
        self.sessions: dict[str, Session] = {}
        self.started = time.time()
        self.app = web.Application()
        self.app.add_routes([
            web.get("/ws", self.ws_handler),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/status", self.status),
            web.get("/metrics", self.metrics),
        ])  # fmt: skip

    # -- HTTP endpoints ------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "version": __version__, "uptime_s": self._uptime()})

    async def readyz(self, request: web.Request) -> web.Response:
        ready = [w.name for w in self.deps.registry.healthy() if w.resident]
        body = {"ready": bool(ready), "workers": ready}
        return web.json_response(body, status=200 if ready else 503)

    async def status(self, request: web.Request) -> web.Response:
        reg = self.deps.registry
        return web.json_response({
            "version": __version__,
            "uptime_s": self._uptime(),
            "sessions": [s.summary() for s in self.sessions.values()],
            "workers": [w.summary() for w in reg.workers.values()],
            "turn_total_ms_p50": round(self.deps.telemetry.turn_total.p(50), 1),
            "bargein_pause_ms_p95": round(self.deps.telemetry.pause.p(95), 1),
        })  # fmt: skip

    async def metrics(self, request: web.Request) -> web.Response:
        self.deps.telemetry.g_sessions.set(len(self.sessions))
        body = generate_latest(self.deps.telemetry.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _uptime(self) -> float:
        return round(time.time() - self.started, 1)

    # -- WebSocket sessions --------------------------------------------------------------

    async def ws_handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=1 << 20)
        await ws.prepare(request)
        outbox = Outbox(WsTransport(ws))
        outbox.start()
        session: Session | None = None
        try:
            hello = await self._hello(ws, request, outbox)
            if hello is not None:
                session = await self._open(hello, outbox)
            if session is not None:
                with session_context(session.id):
                    await self._serve(ws, session, outbox, hello)  # type: ignore[arg-type]
        finally:
            if session is not None:
                self.sessions.pop(session.id, None)
                await session.aclose()
            await outbox.aclose()
            await ws.close()
        return ws

    async def _hello(
        self, ws: web.WebSocketResponse, request: web.Request, outbox: Outbox
    ) -> Hello | None:
        try:
            msg = await ws.receive(timeout=_HELLO_TIMEOUT_S)
        except TimeoutError:
            self._error(outbox, InvalidArgument("no hello within 10 s"), fatal=True)
            return None
        if msg.type != WSMsgType.TEXT:
            self._error(
                outbox, InvalidArgument("the first message must be a JSON hello"), fatal=True
            )
            return None
        try:
            hello = parse_client_json(msg.data)
            if not isinstance(hello, Hello):
                raise InvalidArgument("the first message must be a hello")
            presented = hello.api_key or key_from_metadata(request.headers.items())
            check_key(self.deps.config.auth.api_key, presented)
        except DuplexError as exc:
            self._error(outbox, exc, fatal=True)
            return None
        return hello

    async def _open(self, hello: Hello, outbox: Outbox) -> Session | None:
        if len(self.sessions) >= self.deps.config.sessions.max:
            self._error(outbox, DuplexError("server busy: session limit reached"), fatal=True,
                        code="busy")  # fmt: skip
            return None
        session = Session(self.deps, hello, outbox)
        try:
            await session.start()
        except DuplexError as exc:
            self._error(outbox, exc, fatal=True)
            await session.aclose()
            return None
        self.sessions[session.id] = session
        return session

    async def _serve(
        self, ws: web.WebSocketResponse, session: Session, outbox: Outbox, hello: Hello
    ) -> None:
        frame_bytes, bad_frames = hello.input_frame_bytes(), 0
        idle = self.deps.config.sessions.idle_timeout_s
        while True:
            try:
                msg = await ws.receive(timeout=idle)
            except TimeoutError:
                self._error(outbox, DuplexError(f"idle for {idle:.0f} s"), fatal=True,
                            code="idle_timeout")  # fmt: skip
                return
            if msg.type == WSMsgType.BINARY:
                if len(msg.data) == frame_bytes:
                    session.on_audio(msg.data)
                    continue
                bad_frames += 1
                if bad_frames <= _MAX_BAD_FRAMES_REPORTED:
                    self._error(outbox, InvalidArgument(
                        f"malformed frame: {len(msg.data)} bytes, expected {frame_bytes} "
                        f"(20 ms of s16le mono at {hello.sample_rate} Hz); dropped"
                    ), code="malformed_frame")  # fmt: skip
            elif msg.type == WSMsgType.TEXT:
                if not self._on_json(msg.data, session, outbox):
                    return
            else:  # CLOSE, CLOSING, CLOSED, ERROR
                return

    def _on_json(self, raw: str, session: Session, outbox: Outbox) -> bool:
        try:
            msg = parse_client_json(raw)
        except DuplexError as exc:
            self._error(outbox, exc)
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
                self._error(outbox, InvalidArgument("hello was already received"))
        return True

    def _error(
        self, outbox: Outbox, exc: DuplexError, *, fatal: bool = False, code: str | None = None
    ) -> None:
        code = code or ("unauthenticated" if isinstance(exc, AuthError) else exc.status.lower())
        self.deps.telemetry.c_errors.labels(code).inc()
        outbox.event({"type": "error", "code": code, "message": str(exc), "fatal": fatal})

    async def aclose(self) -> None:
        for session in list(self.sessions.values()):
            with contextlib.suppress(Exception):
                await session.aclose()
        await asyncio.sleep(0)
