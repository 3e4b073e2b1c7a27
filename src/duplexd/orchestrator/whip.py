"""WebRTC signalling with WHIP (RFC 9725) on the orchestrator's port; the calls are in
`webrtc.py`.

    POST /whip            Content-Type: application/sdp, the offer  -> 201 Created, the answer,
                          Location: /whip/<session id>
    DELETE /whip/<id>     ends the session                          -> 200
    OPTIONS /whip         ICE servers as `Link: <url>; rel="ice-server"` headers

ICE: aiortc gathers host candidates on every non-loopback interface (plus STUN/TURN from
`transport.ice_servers`), completes gathering before answering (no trickle: PATCH gets 405),
and browsers on the same host or LAN connect with no server at all.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from typing import Any

from aiohttp import web
from aiortc import RTCIceServer
from aiortc.sdp import SessionDescription

from duplexd.errors import DaemonUnavailable, DuplexError, InvalidArgument
from duplexd.logging import get_logger
from duplexd.orchestrator.dispatch import Dispatcher
from duplexd.orchestrator.protocol import Hello, parse_client_json
from duplexd.orchestrator.webrtc import RtcCall

__all__ = [
    "WhipService",
    "check_offer",
    "http_status",
    "ice_link_headers",
    "parse_ice_server",
    "read_offer",
    "whip_hello",
]

log = get_logger("duplexd.orchestrator.whip")

_MAX_OFFER_BYTES = 64 * 1024

# HTTP status for the errors a session start can raise
_HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 503,
    "UNAVAILABLE": 503,
    "FAILED_PRECONDITION": 409,
}


# -- signalling helpers ------------------------------------------------------------------------


def parse_ice_server(url: str) -> RTCIceServer:
    """`stun:host:port`, `turn:host:port?transport=udp`, credentials as `turn:USER:PASS@host`."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme not in ("stun", "stuns", "turn", "turns") or not rest:
        raise InvalidArgument(f"transport.ice_servers: {url!r} is not a stun:/turn: URL")
    if "@" in rest:
        creds, host = rest.rsplit("@", 1)
        user, _, password = creds.partition(":")
        return RTCIceServer(
            urls=f"{scheme}:{host}",
            username=urllib.parse.unquote(user),
            credential=urllib.parse.unquote(password),
        )
    return RTCIceServer(urls=url)


def ice_link_headers(urls: list[str]) -> list[str]:
    """RFC 9725 section 4.6: one `Link` header value per ICE server."""
    out = []
    for url in urls:
        server = parse_ice_server(url)
        value = f'<{server.urls}>; rel="ice-server"'
        if server.username is not None:
            value += (
                f'; username="{server.username}"; credential="{server.credential}"'
                '; credential-type="password"'
            )
        out.append(value)
    return out


def check_offer(sdp: str) -> SessionDescription:
    """Parse an offer and insist on an audio section that offers Opus (else InvalidArgument)."""
    if len(sdp) > _MAX_OFFER_BYTES:
        raise InvalidArgument(f"SDP offer too large ({len(sdp)} bytes)")
    if not sdp.lstrip().startswith("v=0"):
        raise InvalidArgument("malformed SDP offer: it must start with v=0")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:
        raise InvalidArgument(f"malformed SDP offer: {exc or type(exc).__name__}") from None
    audio = [m for m in parsed.media if m.kind == "audio"]
    if not audio:
        kinds = ", ".join(m.kind for m in parsed.media) or "none"
        raise InvalidArgument(f"the offer has no audio section (media: {kinds})")
    codecs = [c.mimeType for c in audio[0].rtp.codecs]
    if "audio/opus" not in {c.lower() for c in codecs}:
        offered = ", ".join(sorted({c.split("/", 1)[-1] for c in codecs})) or "none"
        raise InvalidArgument(f"unsupported audio codec: Opus is required (offered: {offered})")
    if audio[0].direction == "inactive":
        raise InvalidArgument("the offer's audio section is inactive")
    return parsed


# -- the WHIP endpoint ------------------------------------------------------------------------


class WhipService:
    """Answers WHIP offers with calls; owns every peer connection it created."""

    def __init__(self, dispatch: Dispatcher) -> None:
        self.dispatch = dispatch
        self.deps = dispatch.deps
        self.calls: dict[str, RtcCall] = {}
        self.ice_servers = [parse_ice_server(u) for u in self.deps.config.transport.ice_servers]

    def link_headers(self) -> list[str]:
        return ice_link_headers(self.deps.config.transport.ice_servers)

    async def answer(self, offer_sdp: str, hello: Hello) -> tuple[RtcCall, str]:
        """Start a session for this offer; returns the call and the SDP answer.

        Raises DuplexError (InvalidArgument for a bad offer) with nothing left running.
        """
        parsed = check_offer(offer_sdp)
        audio = next(m for m in parsed.media if m.kind == "audio")
        expects_audio = audio.direction in (None, "sendrecv", "sendonly")
        self.dispatch.admit()  # the session limit; none while the orchestrator goes away
        call = await RtcCall.open(self.dispatch, hello, offer_sdp, ice_servers=self.ice_servers,
                                  expects_audio=expects_audio, on_close=self.forget)  # fmt: skip
        if (reason := self.dispatch.going_away) is not None:  # drained while it started
            await call.aclose(reason)
            raise DaemonUnavailable(f"{reason}: not accepting new sessions")
        self.calls[call.id] = call
        self.dispatch.sessions[call.id] = call.session
        call.start()
        log.info("webrtc call answered", session_id=call.id, model=hello.model)
        return call, call.pc.localDescription.sdp

    def forget(self, call: RtcCall) -> None:
        self.calls.pop(call.id, None)
        if self.dispatch.sessions.get(call.id) is call.session:
            self.dispatch.sessions.pop(call.id, None)

    async def end(self, call_id: str) -> bool:
        call = self.calls.get(call_id)
        if call is None:
            return False
        await call.aclose("DELETE from the client")
        return True

    async def aclose(self, reason: str) -> None:
        """End every call; a client with a data channel hears why (a fatal error event)."""
        calls = list(self.calls.values())
        for call in calls:
            call.outbox.flush_audio()  # no reply audio ahead of the goodbye
            self.dispatch.error(call.outbox, DaemonUnavailable(reason), fatal=True)
        await asyncio.gather(*(call.aclose(reason) for call in calls), return_exceptions=True)


def http_status(exc: DuplexError) -> int:
    return _HTTP_STATUS.get(exc.status, 500)


async def read_offer(request: web.Request) -> str:
    ctype = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/sdp":
        raise web.HTTPUnsupportedMediaType(
            text=f"WHIP offers are Content-Type application/sdp, got {ctype or 'none'!r}\n"
        )
    if request.content_length is not None and request.content_length > _MAX_OFFER_BYTES:
        raise web.HTTPRequestEntityTooLarge(
            max_size=_MAX_OFFER_BYTES, actual_size=request.content_length
        )
    raw = await request.read()
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise InvalidArgument("malformed SDP offer: not UTF-8 text") from None


def whip_hello(request: web.Request) -> Hello:
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
