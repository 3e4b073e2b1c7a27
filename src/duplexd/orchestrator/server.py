"""The orchestrator's one port: WebSocket and WebRTC (WHIP) sessions, the web client, and
/healthz, /readyz, /status, /models, /metrics.

Routes only: the WebSocket transport is `ws.py`, WHIP signalling `whip.py` (calls in
`webrtc.py`), and both hand client messages to the one `Dispatcher` (`dispatch.py`).

With an API key (`auth.api_key`, DUPLEX_API_KEY) every route but the probes (`/healthz`,
`/readyz`) and the web client's static page needs it (`Authorization: Bearer KEY` or
`X-Api-Key`; 401 otherwise); `/ws` and `/whip` check it themselves (the hello may carry it).
`/status` never shows what callers said unless `server.status_transcripts` is on.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from duplexd import __version__
from duplexd.auth import check_key, key_from_metadata
from duplexd.errors import AuthError, DuplexError
from duplexd.logging import get_logger
from duplexd.orchestrator.dispatch import GOING_AWAY, Dispatcher
from duplexd.orchestrator.session import Session, SessionDeps
from duplexd.orchestrator.ws import WsService
from duplexd.rpc import tts_pb2 as pb

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler

    from duplexd.orchestrator.whip import WhipService

__all__ = ["WEB_DIR", "OrchestratorServer"]

log = get_logger("duplexd.orchestrator.server")

WEB_DIR = Path(__file__).parent / "web"
_WEBRTC_EXTRA = "pip install 'duplex[webrtc]' (aiortc)"
OPEN_ROUTES = frozenset({"/healthz", "/readyz", "/", "/web"})
"""Served without the API key: the probes, and the web client's page and scripts (static, no
data; the page asks for the key and sends it with its requests)."""
_OWN_AUTH = frozenset({"/ws", "/whip", "/whip/{id}"})  # in the hello, or WHIP's own 401


class OrchestratorServer:
    def __init__(self, deps: SessionDeps) -> None:
        self.deps = deps
        self.dispatch = Dispatcher(deps)
        self.sessions: dict[str, Session] = self.dispatch.sessions
        self.started = time.time()
        self._ws = WsService(self.dispatch)
        self._whip: WhipService | None = None
        self.webrtc_unavailable = self._webrtc_unavailable()
        self.app = web.Application(middlewares=[self._require_key])
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

    @web.middleware
    async def _require_key(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """With an API key set: every route but the open ones needs it (see module doc)."""
        resource = request.match_info.route.resource  # decided on the route, not the path
        route = resource.canonical if resource is not None else None
        if (self.deps.config.auth.api_key is None or route is None  # None: a 404 follows
                or route in OPEN_ROUTES or route in _OWN_AUTH):  # fmt: skip
            return await handler(request)
        self._check_key(request)
        return await handler(request)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "version": __version__, "uptime_s": self._uptime()})

    async def readyz(self, request: web.Request) -> web.Response:
        ready = [w.name for w in self.deps.registry.healthy() if w.resident]
        draining = self.dispatch.going_away is not None  # SIGTERM: no new sessions
        body = {"ready": bool(ready) and not draining, "workers": ready, "draining": draining}
        return web.json_response(body, status=200 if body["ready"] else 503)

    async def status(self, request: web.Request) -> web.Response:
        reg = self.deps.registry
        return web.json_response({
            "version": __version__,
            "uptime_s": self._uptime(),
            "sessions": [self._session_status(s) for s in self.sessions.values()],
            "workers": [w.summary() for w in reg.workers.values()],
            "webrtc": {
                "available": self.webrtc_unavailable is None,
                "reason": self.webrtc_unavailable,
                "peers": [c.summary() for c in self._whip.calls.values()] if self._whip else [],
            },
            "turn_total_ms_p50": round(self.deps.telemetry.turn_total.p(50), 1),
            "bargein_pause_ms_p95": round(self.deps.telemetry.pause.p(95), 1),
            "end_of_turn": {
                "engine": self.deps.end_of_turn.name if self.deps.end_of_turn else "silence",
                "model_ms_p95": round(self.deps.telemetry.eot_model.p(95), 1),
                "priority": self.deps.end_of_turn.priority if self.deps.end_of_turn else None,
            },
            "warnings": list(self.deps.warnings),
        })  # fmt: skip

    async def metrics(self, request: web.Request) -> web.Response:
        self.deps.telemetry.g_sessions.set(len(self.sessions))
        body = generate_latest(self.deps.telemetry.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _session_status(self, session: Session) -> dict[str, Any]:
        summary = {**session.summary(), "transport": self._transport_of(session.id)}
        if not self.deps.config.server.status_transcripts:  # what callers say is private
            summary.pop("transcript_tail", None)
        return summary

    def _uptime(self) -> float:
        return round(time.time() - self.started, 1)

    def _transport_of(self, session_id: str) -> str:
        return "webrtc" if self._whip is not None and session_id in self._whip.calls else "ws"

    async def models(self, request: web.Request) -> web.Response:
        """The union of the workers' models, as their ListModels reports them (voices included)."""
        merged: dict[str, dict[str, Any]] = {}
        rank = {"resident": 0, "loading": 1, "unloading": 2, "not loaded": 3}
        for worker in self.deps.registry.workers.values():
            for m in worker.models:
                entry = merged.setdefault(m.id, {
                    "id": m.id, "family": m.family, "languages": list(m.languages),
                    "tags": list(m.tags), "native_sr": m.native_sr, "default": False,
                    "resident": False, "pinned": False, "available": False,
                    "unavailable_reason": "", "memory_bytes": m.memory_bytes, "workers": [],
                    "resident_on": [], "voices": list(m.voices),
                    "default_voice": m.default_voice or None, "description": m.description,
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
                # STATE in the worker's words (`duplexctl models list`, the dashboard): the
                # most useful one across workers, resident first
                word = (m.status or pb.ModelState.Name(m.state).lower().replace("_", " ")
                        if worker.healthy else "worker down")  # fmt: skip
                if rank.get(word, 4) < rank.get(entry.get("status", ""), 5):
                    entry["status"] = word
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
            from duplexd.orchestrator.webrtc import RtcCall  # noqa: F401  # needs aiortc
            from duplexd.orchestrator.whip import WhipService
        except ImportError as exc:
            return f"WebRTC needs the `webrtc` extra: {_WEBRTC_EXTRA} ({exc})"
        try:
            self._whip = WhipService(self.dispatch)
        except DuplexError as exc:  # a bad transport.ice_servers entry
            return f"WebRTC is misconfigured: {exc}"
        return None

    def _check_key(self, request: web.Request) -> None:
        """401 with a Bearer challenge (and counted) unless the request carries the API key."""
        try:
            check_key(self.deps.config.auth.api_key, key_from_metadata(request.headers.items()))
        except AuthError as exc:
            self.deps.telemetry.c_errors.labels("unauthenticated").inc()
            raise web.HTTPUnauthorized(
                text=f"{exc}\n", headers={"WWW-Authenticate": 'Bearer realm="duplex"'}
            ) from None

    def _whip_service(self, request: web.Request) -> WhipService:
        if self._whip is None:
            raise web.HTTPNotImplemented(text=f"{self.webrtc_unavailable}\n")
        self._check_key(request)
        return self._whip

    async def whip_post(self, request: web.Request) -> web.Response:
        """An SDP offer in, a session and its SDP answer out (201 + Location)."""
        whip = self._whip_service(request)  # 501 before anything needs aiortc
        from duplexd.orchestrator.whip import http_status, read_offer, whip_hello

        try:
            offer = await read_offer(request)
            hello = whip_hello(request)
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

    # -- WebSocket sessions (ws.py) and shutdown ------------------------------------------

    async def ws_handler(self, request: web.Request) -> web.StreamResponse:
        return await self._ws.handle(request)

    async def drain(self, timeout_s: float, reason: str = GOING_AWAY) -> None:
        """Going away (SIGTERM): refuse new sessions (readyz 503, a fatal error to a new /ws,
        503 to a WHIP offer), tell each live session why (a fatal `unavailable` error event;
        a WebSocket also gets a close frame 1001 with `reason`) and close it, ending its
        worker session; all within `timeout_s`."""
        self.dispatch.going_away = reason
        log.info("draining sessions", sessions=len(self.sessions), timeout_s=timeout_s)
        closing = [self._ws.aclose(reason)]
        if self._whip is not None:
            closing.append(self._whip.aclose(reason))
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*closing)
        except TimeoutError:
            log.warning("sessions still open after the drain", sessions=sorted(self.sessions))

    async def aclose(self) -> None:
        await self.drain(self.deps.config.server.shutdown_grace_s)
