"""The WebSocket transport (docs/protocol.md): one connection at `/ws` is one session.

In: a JSON hello, then binary 20 ms mic frames (PCM, or one Opus packet each) and JSON control
messages, which go to the shared `Dispatcher`. Out: the Outbox's JSON events and audio frames
(8-byte header + PCM or one Opus packet). `WsService` owns the live connections so that a
shutdown can tell each one it is going away: a fatal `unavailable` error event, then a close
frame with code 1001 and the reason.

Every way a connection ends says why: a fatal error event before the close (a bad hello, the
session limit, idle), or for a connection given up on, the error event and a close code with
the reason: 1001 going away (shutdown), 1008 for a client too far behind to be served (its
send queue passed `sessions.send_queue_events`: nothing more is queued for it, so its memory
stays bounded), 1011 for an orchestrator bug. A client that does not answer a close frame is
cut off.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

from duplexd.auth import check_key, key_from_metadata
from duplexd.errors import BusyError, DaemonUnavailable, DuplexError, InvalidArgument
from duplexd.logging import get_logger, session_context
from duplexd.orchestrator.dispatch import Dispatcher
from duplexd.orchestrator.protocol import HEADER, Hello, parse_client_json
from duplexd.orchestrator.session import Session
from duplexd.orchestrator.transport import Outbox, dumps

if TYPE_CHECKING:
    from duplexd.audio.opus import OpusEncoder

__all__ = ["AudioIn", "WsConnection", "WsService", "WsTransport"]

log = get_logger("duplexd.orchestrator.ws")

HELLO_TIMEOUT_S = 10.0
MAX_BAD_FRAMES_REPORTED = 5  # after this many, malformed frames are counted, not each reported
_GOING_AWAY_DRAIN_S = 0.5  # going away: time for the queued events (and the error) to go out
_GOING_AWAY_CLOSE_S = 1.0  # ...and for the client to answer the close frame
_SLOW_DRAIN_S = 2.0  # a client too far behind: time for what is on its way, and the error
_SLOW_CLOSE_S = 3.0  # ...and for its close handshake, then the connection is cut
_CLOSE_S = 5.0  # any other close: a client that does not answer the close frame is cut off


@dataclass(frozen=True)
class _Goodbye:
    """How a connection the orchestrator gives up on ends: error event, then close + reason."""

    error: DuplexError
    code: str  # the error event's
    close_code: int
    drain_s: float
    close_s: float

    @property
    def reason(self) -> str:
        return self.error.message


def _going_away(reason: str) -> _Goodbye:
    error = DaemonUnavailable(reason)
    return _Goodbye(error, "unavailable", WSCloseCode.GOING_AWAY, _GOING_AWAY_DRAIN_S,
                    _GOING_AWAY_CLOSE_S)  # fmt: skip


class WsTransport:
    """`Transport` over one WebSocket: events as text, audio as binary messages."""

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


class AudioIn:
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


class WsConnection:
    """One WebSocket from upgrade to close: hello, session, serve loop, cleanup.

    The conversation (hello, session start, serve loop) runs in its own task, so `go_away`
    can stop it where it waits for the client; the connection then says why (a fatal error
    event) and closes with 1001 and the reason, a clean closing handshake.
    """

    def __init__(self, request: web.Request, dispatch: Dispatcher) -> None:
        self.request = request
        self.dispatch = dispatch
        self.ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=1 << 20)
        self.transport = WsTransport(self.ws)
        sessions = dispatch.deps.config.sessions
        self.outbox = Outbox(
            self.transport, max_audio=sessions.send_queue_audio_frames,
            max_events=sessions.send_queue_events, on_overflow=self._too_slow,
        )  # fmt: skip
        self.session: Session | None = None
        self.done = asyncio.Event()
        self._goodbye: _Goodbye | None = None  # the orchestrator is ending this connection
        self._talk: asyncio.Task[None] | None = None
        self._receiving = False  # the conversation waits in ws.receive()

    async def run(self) -> web.WebSocketResponse:
        ws, outbox = self.ws, self.outbox
        try:
            await ws.prepare(self.request)
            outbox.start()
            if self.dispatch.going_away is None:  # draining: refused before the hello
                await self._converse_until_done()
        except Exception as exc:  # a bug: still say so, and close with a reason
            log.exception("websocket session failed")
            self._end(_Goodbye(DuplexError(f"internal error: {type(exc).__name__}"),
                               "internal", WSCloseCode.INTERNAL_ERROR, 0.5, 1.0))  # fmt: skip
        finally:
            await self._wind_down()
        return ws

    async def _wind_down(self) -> None:
        ws, outbox = self.ws, self.outbox
        bye = self._goodbye
        if bye is None and self.dispatch.going_away is not None:
            bye = _going_away(self.dispatch.going_away)
        if not ws.prepared:
            bye = None
        if bye is not None:  # the goodbye goes out before the session winds down
            outbox.flush_audio()  # no reply audio ahead of it
            self.dispatch.error(outbox, bye.error, fatal=True, code=bye.code)
            await outbox.aclose(drain_s=bye.drain_s)
        if self.session is not None:
            self.dispatch.sessions.pop(self.session.id, None)
            await self.session.aclose()
        await outbox.aclose()
        if ws.prepared:  # a close frame (with the reason); a client that never answers is cut off
            code = bye.close_code if bye is not None else WSCloseCode.OK
            message = bye.reason.encode()[:123] if bye is not None else b""
            try:
                async with asyncio.timeout(bye.close_s if bye is not None else _CLOSE_S):
                    for event in outbox.take_unsent():  # the goodbye, if the writer stalled
                        await self.transport.send_event(event)
                    await ws.close(code=code, message=message)
            except TimeoutError:
                transport = self.request.transport
                if transport is not None:
                    transport.abort()
        self.done.set()

    def _end(self, goodbye: _Goodbye) -> None:
        """Stop the conversation with this goodbye (the first one given wins)."""
        if self._goodbye is None:
            self._goodbye = goodbye
            if self._receiving and self._talk is not None:
                self._talk.cancel()  # as a receive timeout would; otherwise see `_receive`

    def _too_slow(self, reason: str) -> None:
        """The Outbox gave up on a client that does not read (its queue was dropped)."""
        self.dispatch.deps.telemetry.c_errors.labels("slow_client").inc()
        self._end(_Goodbye(DuplexError(reason), "slow_client", WSCloseCode.POLICY_VIOLATION,
                           _SLOW_DRAIN_S, _SLOW_CLOSE_S))  # fmt: skip

    async def go_away(self, reason: str) -> None:
        """Stop the conversation, tell the client why (error event, close 1001 + reason) and
        close the session; returns once all that is done."""
        self._end(_going_away(reason))
        await self.done.wait()

    async def _converse_until_done(self) -> None:
        talk = self._talk = asyncio.create_task(self._converse(), name="ws-conversation")
        try:
            await asyncio.wait({talk})
        finally:
            if not talk.done():  # the handler itself is cancelled (server shutdown)
                talk.cancel()
                await asyncio.wait({talk})
        if not talk.cancelled() and (exc := talk.exception()) is not None:
            raise exc

    async def _converse(self) -> None:
        hello = await self._hello()
        if hello is None:
            return
        if hello.codec == "opus":
            from duplexd.audio.opus import OpusEncoder

            self.transport.encoder = OpusEncoder(48_000)
        self.session = await self._open(hello)
        if self.session is not None:
            with session_context(self.session.id):
                await self._serve(self.session, hello)

    async def _receive(self, wait_s: float) -> WSMessage | None:
        """The next client message; None once the connection is going away."""
        if self._goodbye is not None:
            return None
        self._receiving = True
        try:
            return await self.ws.receive(timeout=wait_s)
        finally:
            self._receiving = False

    async def _hello(self) -> Hello | None:
        outbox, dispatch = self.outbox, self.dispatch
        try:
            msg = await self._receive(HELLO_TIMEOUT_S)
        except TimeoutError:
            dispatch.error(outbox, InvalidArgument("no hello within 10 s"), fatal=True)
            return None
        if msg is None:
            return None
        if msg.type != WSMsgType.TEXT:
            dispatch.error(
                outbox, InvalidArgument("the first message must be a JSON hello"), fatal=True
            )
            return None
        try:
            hello = parse_client_json(msg.data)
            if not isinstance(hello, Hello):
                raise InvalidArgument("the first message must be a hello")
            presented = hello.api_key or key_from_metadata(self.request.headers.items())
            check_key(dispatch.deps.config.auth.api_key, presented)
        except DuplexError as exc:
            dispatch.error(outbox, exc, fatal=True)
            return None
        return hello

    async def _open(self, hello: Hello) -> Session | None:
        dispatch, outbox = self.dispatch, self.outbox
        try:
            dispatch.admit()
        except BusyError as exc:
            dispatch.error(outbox, exc, fatal=True, code="busy")
            return None
        except DuplexError as exc:
            dispatch.error(outbox, exc, fatal=True)
            return None
        try:
            session = Session(dispatch.deps, hello, outbox)  # refuses a disallowed `llm`
        except DuplexError as exc:
            dispatch.error(outbox, exc, fatal=True)
            return None
        try:
            await session.start()
        except DuplexError as exc:
            dispatch.error(outbox, exc, fatal=True)
            await session.aclose()
            return None
        except BaseException:  # cancelled (a forced shutdown): leave nothing on the worker
            await session.aclose()
            raise
        dispatch.sessions[session.id] = session
        return session

    async def _serve(self, session: Session, hello: Hello) -> None:
        outbox, dispatch = self.outbox, self.dispatch
        idle = dispatch.deps.config.sessions.idle_timeout_s
        audio_in = AudioIn(hello)
        while True:
            try:
                msg = await self._receive(idle)
            except TimeoutError:
                dispatch.error(outbox, DuplexError(f"idle for {idle:.0f} s"), fatal=True,
                               code="idle_timeout")  # fmt: skip
                return
            if msg is None:  # going away
                return
            try:
                if msg.type == WSMsgType.BINARY:
                    try:
                        for pcm in audio_in.frames(msg.data):
                            session.on_audio(pcm)
                    except InvalidArgument as exc:
                        audio_in.bad_frames += 1
                        if audio_in.bad_frames <= MAX_BAD_FRAMES_REPORTED:
                            dispatch.error(outbox, exc, code="malformed_frame")
                elif msg.type == WSMsgType.TEXT:
                    if not dispatch.on_json(msg.data, session, outbox):
                        return
                else:  # CLOSE, CLOSING, CLOSED, ERROR
                    return
            except DuplexError as exc:  # the session refused it: say so, keep serving
                dispatch.error(outbox, exc)
            except Exception as exc:  # a bug: say so, keep serving
                log.exception("client message failed", session_id=session.id)
                dispatch.error(outbox, DuplexError(f"internal error: {type(exc).__name__}"))
            # a burst already buffered never suspends `receive()`: let the writer send what
            # this message produced, so only a client that does not read fills its queue
            await asyncio.sleep(0)


class WsService:
    """The `/ws` endpoint: runs each connection and can tell them all to go away."""

    def __init__(self, dispatch: Dispatcher) -> None:
        self.dispatch = dispatch
        self.connections: set[WsConnection] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not web.WebSocketResponse().can_prepare(request).ok:  # a plain HTTP request
            return web.json_response(
                {"error": "expected a WebSocket upgrade",
                 "hint": "connect with a WebSocket client: ws://HOST:PORT/ws (docs/protocol.md)"},
                status=400,
            )  # fmt: skip
        conn = WsConnection(request, self.dispatch)
        self.connections.add(conn)
        try:
            return await conn.run()
        finally:
            self.connections.discard(conn)

    async def aclose(self, reason: str) -> None:
        """Every connection: error event, close 1001 with `reason`, session closed."""
        conns = list(self.connections)
        results = await asyncio.gather(*(c.go_away(reason) for c in conns),
                                       return_exceptions=True)  # fmt: skip
        for conn, result in zip(conns, results, strict=True):
            if isinstance(result, Exception):
                log.info("websocket did not go away cleanly", error=repr(result),
                         session_id=conn.session.id if conn.session else None)  # fmt: skip
