"""The orchestrator's one port: WebSocket and WebRTC (WHIP) sessions, the web client, and
/healthz, /readyz, /status, /models, /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from duplexd import __version__
from duplexd.auth import check_key, key_from_metadata
from duplexd.errors import AuthError, DuplexError, InvalidArgument
from duplexd.logging import get_logger, session_context
from duplexd.orchestrator.protocol import (
    HEADER,
    EndMsg,
    Hello,
    LlmMsg,
    PingMsg,
    TextMsg,
    parse_client_json,
)
from duplexd.orchestrator.session import Session, SessionDeps
from duplexd.orchestrator.transport import Outbox, dumps
from duplexd.rpc import tts_pb2 as pb

if TYPE_CHECKING:
    from duplexd.audio.opus import OpusEncoder
    from duplexd.orchestrator.webrtc import WhipService

__all__ = ["WEB_DIR", "OrchestratorServer", "WsTransport"]

log = get_logger("duplexd.orchestrator.server")

_HELLO_TIMEOUT_S = 10.0
_MAX_BAD_FRAMES_REPORTED = 5  # after this many, malformed frames are counted, not each reported
WEB_DIR = Path(__file__).parent / "web"
_WEBRTC_EXTRA = "pip install 'duplex[webrtc]' (aiortc)"


class WsTransport:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.encoder: OpusEncoder | None = None  # set when the hello asks for codec opus

    async def send_event(self, event: dict[str, Any]) -> None:
        if not self.ws.closed:
            await self.ws.send_str(dumps(event))

    async def send_audio(self, message: bytes) -> None:
        if self.ws.closed:
            return
        if self.encoder is not None:  # same header, one Opus packet instead of the PCM
            packet = self.encoder.encode(message[HEADER.size :])
            message = message[: HEADER.size] + packet
        await self.ws.send_bytes(message)


class OrchestratorServer:
    def __init__(self, deps: SessionDeps) -> None:
        self.deps = deps
        self.sessions: dict[str, Session] = {}
        self.started = time.time()
        self._whip: WhipService | None = None
        self.webrtc_unavailable = self._webrtc_unavailable()
        self.app = web.Application()
        self.app.add_routes([
            web.get("/ws", self.ws_handler),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/status", self.status),
            web.get("/models", self.models),
            web.get("/metrics", self.metrics),
            web.get("/", self.index),
            web.static("/web", WEB_DIR, append_version=False),
            web.post("/whip", self.whip_post),
            web.options("/whip", self.whip_options),
            web.delete("/whip/{id}", self.whip_delete),
            web.patch("/whip/{id}", self.whip_patch),
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
            "sessions": [
                {**s.summary(), "transport": self._transport_of(s.id)}
                for s in self.sessions.values()
            ],
            "workers": [w.summary() for w in reg.workers.values()],
            "webrtc": {
                "available": self.webrtc_unavailable is None,
                "reason": self.webrtc_unavailable,
                "peers": [c.summary() for c in self._whip.calls.values()] if self._whip else [],
            },
            "turn_total_ms_p50": round(self.deps.telemetry.turn_total.p(50), 1),
            "bargein_pause_ms_p95": round(self.deps.telemetry.pause.p(95), 1),
        })  # fmt: skip

    async def metrics(self, request: web.Request) -> web.Response:
        self.deps.telemetry.g_sessions.set(len(self.sessions))
        body = generate_latest(self.deps.telemetry.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _uptime(self) -> float:
        return round(time.time() - self.started, 1)

    def _transport_of(self, session_id: str) -> str:
        return "webrtc" if self._whip is not None and session_id in self._whip.calls else "ws"

    async def models(self, request: web.Request) -> web.Response:
        """The union of the workers' models (ModelInfo), with the voices the catalog names."""
        merged: dict[str, dict[str, Any]] = {}
        for worker in self.deps.registry.workers.values():
            for m in worker.models:
                entry = merged.setdefault(m.id, {
                    "id": m.id, "family": m.family, "languages": list(m.languages),
                    "tags": list(m.tags), "native_sr": m.native_sr, "default": False,
                    "resident": False, "pinned": False, "available": False,
                    "unavailable_reason": "", "memory_bytes": m.memory_bytes, "workers": [],
                    "resident_on": [],
                })  # fmt: skip
                entry["workers"].append(worker.name)
                entry["default"] = entry["default"] or m.is_default
                entry["pinned"] = entry["pinned"] or m.pinned
                if m.resident and worker.healthy:
                    entry["resident"] = True
                    entry["resident_on"].append(worker.name)
                if worker.healthy and m.state != pb.UNAVAILABLE:
                    entry["available"] = True
                elif m.unavailable_reason:
                    entry["unavailable_reason"] = m.unavailable_reason
        catalog = _local_catalog()
        for entry in merged.values():
            meta = catalog.get(entry["id"], {})
            entry["voices"] = meta.get("voices", [])
            entry["default_voice"] = meta.get("default_voice")
            entry["description"] = meta.get("description", "")
        models = sorted(merged.values(), key=lambda e: (not e["default"], not e["resident"],
                                                        e["id"]))  # fmt: skip
        default = next((e["id"] for e in models if e["default"]), None)
        return web.json_response({"models": models, "default": default})

    # -- the web client ------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    # -- WebRTC (WHIP, RFC 9725) ---------------------------------------------------------

    def _webrtc_unavailable(self) -> str | None:
        if not self.deps.config.transport.webrtc:
            return "WebRTC is turned off on this orchestrator (transport.webrtc: false)"
        try:
            from duplexd.orchestrator.webrtc import WhipService
        except ImportError as exc:
            return f"WebRTC needs the `webrtc` extra: {_WEBRTC_EXTRA} ({exc})"
        try:
            self._whip = WhipService(
                self.deps, self.sessions, on_json=self._on_json, report=self._error
            )
        except DuplexError as exc:  # a bad transport.ice_servers entry
            return f"WebRTC is misconfigured: {exc}"
        return None

    def _whip_service(self, request: web.Request) -> WhipService:
        if self._whip is None:
            raise web.HTTPNotImplemented(text=f"{self.webrtc_unavailable}\n")
        try:
            check_key(self.deps.config.auth.api_key, key_from_metadata(request.headers.items()))
        except AuthError as exc:
            self.deps.telemetry.c_errors.labels("unauthenticated").inc()
            raise web.HTTPUnauthorized(
                text=f"{exc}\n", headers={"WWW-Authenticate": 'Bearer realm="duplex"'}
            ) from None
        return self._whip

    async def whip_post(self, request: web.Request) -> web.Response:
        """An SDP offer in, a session and its SDP answer out (201 + Location)."""
        whip = self._whip_service(request)  # 501 before anything needs aiortc
        from duplexd.orchestrator.webrtc import http_status, read_offer

        try:
            offer = await read_offer(request)
            hello = _whip_hello(request)
            call, answer = await whip.answer(offer, hello)
        except DuplexError as exc:
            code = exc.status.lower()
            self.deps.telemetry.c_errors.labels(code).inc()
            log.info("whip offer refused", code=code, error=str(exc))
            return web.Response(status=http_status(exc), text=f"{exc}\n")
        resp = web.Response(status=201, text=answer, content_type="application/sdp")
        resp.headers["Location"] = f"{request.path.rstrip('/')}/{call.id}"
        resp.headers["ETag"] = f'"{call.id}"'
        for link in whip.link_headers():
            resp.headers.add("Link", link)
        return resp

    async def whip_options(self, request: web.Request) -> web.Response:
        """What WHIP accepts here, and (to an authorised caller) the ICE servers to use."""
        whip = self._whip_service(request)
        resp = web.Response(status=204, headers={"Accept-Post": "application/sdp"})
        for link in whip.link_headers():
            resp.headers.add("Link", link)
        return resp

    async def whip_delete(self, request: web.Request) -> web.Response:
        whip = self._whip_service(request)
        if not await whip.end(request.match_info["id"]):
            return web.Response(status=404, text="no such WHIP session\n")
        return web.Response(status=200, text="session ended\n")

    async def whip_patch(self, request: web.Request) -> web.Response:
        self._whip_service(request)
        return web.Response(
            status=405,
            headers={"Allow": "DELETE"},
            text="trickle ICE and ICE restarts are not supported: send a complete offer\n",
        )

    # -- WebSocket sessions --------------------------------------------------------------

    async def ws_handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=1 << 20)
        await ws.prepare(request)
        transport = WsTransport(ws)
        outbox = Outbox(transport)
        outbox.start()
        session: Session | None = None
        try:
            hello = await self._hello(ws, request, outbox)
            if hello is not None and hello.codec == "opus":
                from duplexd.audio.opus import OpusEncoder

                transport.encoder = OpusEncoder(48_000)
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
        idle = self.deps.config.sessions.idle_timeout_s
        audio_in = _AudioIn(hello)
        while True:
            try:
                msg = await ws.receive(timeout=idle)
            except TimeoutError:
                self._error(outbox, DuplexError(f"idle for {idle:.0f} s"), fatal=True,
                            code="idle_timeout")  # fmt: skip
                return
            if msg.type == WSMsgType.BINARY:
                try:
                    for pcm in audio_in.frames(msg.data):
                        session.on_audio(pcm)
                except InvalidArgument as exc:
                    audio_in.bad_frames += 1
                    if audio_in.bad_frames <= _MAX_BAD_FRAMES_REPORTED:
                        self._error(outbox, exc, code="malformed_frame")
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
        if self._whip is not None:
            await self._whip.aclose()
        for session in list(self.sessions.values()):
            with contextlib.suppress(Exception):
                await session.aclose()
        await asyncio.sleep(0)


class _AudioIn:
    """A WebSocket session's binary messages -> 20 ms PCM frames (PCM as is, or Opus decoded)."""

    def __init__(self, hello: Hello) -> None:
        self.hello = hello
        self.frame_bytes = hello.input_frame_bytes()
        self.bad_frames = 0
        self.decoder = None
        if hello.codec == "opus":
            from duplexd.audio.opus import OpusDecoder

            self.decoder = OpusDecoder(hello.sample_rate)

    def frames(self, data: bytes) -> list[bytes]:
        if self.decoder is not None:
            try:
                return self.decoder.decode(data)
            except InvalidArgument as exc:
                raise InvalidArgument(f"malformed frame: {exc}; dropped") from None
        if len(data) != self.frame_bytes:
            raise InvalidArgument(
                f"malformed frame: {len(data)} bytes, expected {self.frame_bytes} "
                f"(20 ms of s16le mono at {self.hello.sample_rate} Hz); dropped"
            )
        return [data]


def _whip_hello(request: web.Request) -> Hello:
    """A WebRTC session's hello: 48 kHz in; model, voice, language and aec from the query."""
    query = request.query
    unknown = set(query) - {"model", "voice", "language", "aec"}
    if unknown:
        raise InvalidArgument(f"unknown WHIP query parameter(s): {', '.join(sorted(unknown))}",
                              hint="model, voice, language, aec")  # fmt: skip
    hello: dict[str, Any] = {"type": "hello", "sample_rate": 48_000}
    for key in ("model", "voice", "language"):
        if query.get(key):
            hello[key] = query[key]
    if "aec" in query:
        hello["aec"] = query["aec"].lower() not in ("0", "false", "no", "off")
    msg = parse_client_json(json.dumps(hello))
    assert isinstance(msg, Hello)
    return msg


@functools.cache
def _local_catalog() -> dict[str, dict[str, Any]]:
    """Voices and descriptions from this host's catalog (best effort: workers may differ)."""
    try:
        from duplexd.config import ModelManagerConfig, resolve_path
        from duplexd.tts.catalog import Catalog

        mm = ModelManagerConfig()
        catalog = Catalog.load(resolve_path(mm.catalog), resolve_path(mm.voicepacks_dir))
    except Exception as exc:
        log.info("no local model catalog for /models voices", error=str(exc))
        return {}
    return {
        m.model_id: {"voices": list(m.voices), "default_voice": m.default_voice,
                     "description": m.description}
        for m in catalog
    }  # fmt: skip
