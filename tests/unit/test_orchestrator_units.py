"""Unit tests of the orchestrator's small pieces: protocol, outbox, jitter buffer, responders."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from typing import Any

import httpx
import numpy as np
import pytest

from duplexd.audio.frames import FRAME_BYTES
from duplexd.audio.jitter import JitterBuffer
from duplexd.errors import AuthError, DaemonUnavailable, InvalidArgument
from duplexd.orchestrator.llm import (
    BuiltinResponder,
    Message,
    OpenAIResponder,
    PushResponder,
    create_responder,
)
from duplexd.orchestrator.protocol import (
    FLAG_LAST,
    Hello,
    LlmMsg,
    TextMsg,
    pack_audio,
    parse_client_json,
    unpack_audio,
)
from duplexd.orchestrator.transport import Outbox
from duplexd.orchestrator.turn import BargeIn, TurnTimes


def test_hello_defaults_and_frame_size() -> None:
    hello = parse_client_json('{"type": "hello"}')
    assert isinstance(hello, Hello)
    assert (hello.sample_rate, hello.input_frame_bytes(), hello.aec) == (16_000, 640, True)
    h48 = parse_client_json('{"type": "hello", "sample_rate": 48000}')
    assert isinstance(h48, Hello) and h48.input_frame_bytes() == 1920


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{nope", "not JSON"),
        ("[1, 2]", "JSON object with a string `type`"),
        ('{"type": "dance"}', "unknown message type 'dance'"),
        ('{"type": "hello", "version": 2}', "protocol version 2 not supported"),
        ('{"type": "hello", "sample_rate": 22050}', "sample_rate 22050 not supported"),
        ('{"type": "hello", "colour": "red"}', "colour: Extra inputs"),
        ('{"type": "text", "text": ""}', "bad text message"),
        ('{"type": "text", "text": "' + "x" * 4001 + '"}', "at most 4000"),
        ("[" * 50_000 + "]" * 50_000, "nested deeper than 32"),
        ('{"type": "ping", "t": ' + '{"a": ' * 40 + "1" + "}" * 40 + "}", "nested deeper"),
        ('{"type": "text", "text": "a\\ud800"}', "lone surrogate"),
        ('{"type": "ping", "t": NaN}', "finite number"),
        ('{"type": "hello", "voice": "' + "v" * 201 + '"}', "at most 200"),
    ],
)
def test_bad_messages_name_the_problem(raw: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_client_json(raw)


def test_messages_parse() -> None:
    assert isinstance(parse_client_json('{"type": "text", "text": "hi"}'), TextMsg)
    emoji = parse_client_json('{"type": "text", "text": "[{\\ud83d\\ude00}]"}')  # a pair: fine
    assert isinstance(emoji, TextMsg) and emoji.text == "[{\U0001f600}]"
    llm = parse_client_json('{"type": "llm", "text": "a", "final": true}')
    assert isinstance(llm, LlmMsg) and llm.final


def test_audio_header_round_trip() -> None:
    pcm = bytes(range(256)) * (FRAME_BYTES // 256) + bytes(FRAME_BYTES % 256)
    msg = pack_audio(70_000, 3, pcm, last=True)
    assert unpack_audio(msg) == (70_000, 3, FLAG_LAST, pcm)
    with pytest.raises(InvalidArgument):
        unpack_audio(msg[:-1])


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.gate = asyncio.Event()

    async def send_event(self, event: dict[str, Any]) -> None:
        await self.gate.wait()
        self.sent.append(event)

    async def send_audio(self, message: bytes) -> None:
        await self.gate.wait()
        self.sent.append(message)


@pytest.mark.asyncio
async def test_outbox_flush_drops_queued_audio_but_keeps_events_in_order() -> None:
    transport = _Recorder()
    box = Outbox(transport)
    box.start()
    box.audio(b"a1")
    box.event({"type": "x"})
    box.audio(b"a2")
    assert box.flush_audio() == 2
    box.event({"type": "flush"})
    box.audio(b"a3")
    transport.gate.set()
    await box.aclose()
    assert transport.sent == [{"type": "x"}, {"type": "flush"}, b"a3"]


@pytest.mark.asyncio
async def test_outbox_bounds_audio_for_a_slow_client() -> None:
    transport = _Recorder()
    box = Outbox(transport, max_audio=3)
    for i in range(5):
        box.audio(bytes([i]))
    transport.gate.set()
    box.start()
    await box.aclose()
    assert transport.sent == [b"\x02", b"\x03", b"\x04"] and box.dropped == 2


@pytest.mark.asyncio
async def test_outbox_bounds_events_then_gives_up_on_a_client_that_does_not_read() -> None:
    transport = _Recorder()  # never lets a send finish: a client that does not read
    reasons: list[str] = []
    box = Outbox(transport, max_audio=2, max_events=3, on_overflow=reasons.append)
    box.start()
    for i in range(3):
        box.event({"n": i})
        box.audio(bytes([i]))
    await asyncio.sleep(0)  # the writer takes the first event and blocks on it
    assert (box.queued_events, box.queued_audio) == (2, 2)
    box.event({"n": 3})
    box.event({"n": 4})  # one past the bound: everything queued goes, the client is given up
    assert len(reasons) == 1 and "not reading" in reasons[0] and box.overflowed == reasons[0]
    assert (box.queued_events, box.queued_audio) == (0, 0)
    box.event({"n": 5})
    box.audio(b"x")
    assert (box.queued_events, box.queued_audio) == (0, 0) and len(reasons) == 1
    box.event({"type": "error", "fatal": True}, force=True)  # the last word still goes
    assert box.queued_events == 1
    await box.aclose(drain_s=0.01)
    assert box.take_unsent() == [{"type": "error", "fatal": True}]
    # without a way to give up on the client (WebRTC), the oldest events go instead
    lossy = Outbox(_Recorder(), max_events=2)
    for i in range(5):
        lossy.event({"n": i})
    assert [e for _, e in lossy._items] == [{"n": 3}, {"n": 4}] and lossy.dropped_events == 3


def _frame(value: int) -> bytes:
    return np.full(960, value, dtype="<i2").tobytes()


def test_jitter_buffer_prebuffers_conceals_adapts_and_flushes() -> None:
    jb = JitterBuffer(target_ms=40, max_ms=60)
    jb.push(_frame(1000))
    assert jb.pop() == bytes(FRAME_BYTES)  # waits for 40 ms before playing
    jb.push(_frame(2000))
    assert jb.pop() == _frame(1000) and jb.pop() == _frame(2000)
    concealed = np.frombuffer(jb.pop(), "<i2")  # ran dry: a fade, not a click
    assert jb.stats.underruns == 1 and 0 < abs(int(concealed[0])) <= 1000 and concealed[-1] == 0
    assert jb.target_frames == 3  # adapted to 60 ms
    for v in range(3):
        jb.push(_frame(v + 1))
    assert jb.flush() == 3 and jb.pop() == bytes(FRAME_BYTES)
    with pytest.raises(ValueError):
        jb.push(b"short")


@pytest.mark.asyncio
async def test_builtin_responder_streams_words() -> None:
    bot = BuiltinResponder()
    words = [w async for w in bot.respond([Message("user", "Could you tell me a story?")])]
    assert "".join(words).startswith("Once upon a time") and len(words) > 20
    assert bot.reply_for("hello!").startswith("Hello!")
    assert bot.reply_for("xyzzy").startswith("You said: xyzzy.")


@pytest.mark.asyncio
async def test_push_responder_ends_at_final() -> None:
    push = PushResponder()
    push.push("Hi ", False)
    push.push("there.", True)
    assert [p async for p in push.respond([])] == ["Hi ", "there."]


def _sse(*pieces: str) -> bytes:
    lines = [f"data: {json.dumps({'choices': [{'delta': {'content': p}}]})}\n\n" for p in pieces]
    return ("".join(lines) + ": keep-alive\n\ndata: [DONE]\n\n").encode()


@pytest.mark.asyncio
async def test_openai_responder_parses_sse_and_maps_errors() -> None:
    # httpx's MockTransport stands in for the external LLM service (a labelled test double;
    # the integration tests also run the bridge against a real local HTTP server)
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["stream"] is True and body["messages"][0]["role"] == "system"
        if request.headers.get("authorization") != "Bearer k":
            return httpx.Response(401, text="no")
        return httpx.Response(200, content=_sse("Hel", "lo", "."))

    ok = OpenAIResponder("http://llm/v1", "m", api_key="k", system_prompt="be brief",
                         transport=httpx.MockTransport(handler))  # fmt: skip
    assert [p async for p in ok.respond([Message("user", "hi")])] == ["Hel", "lo", "."]
    bad = OpenAIResponder("http://llm/v1", "m", api_key="x", system_prompt="s",
                          transport=httpx.MockTransport(handler))  # fmt: skip
    with pytest.raises(AuthError, match="rejected the API key"):
        _ = [p async for p in bad.respond([Message("user", "hi")])]

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    gone = OpenAIResponder("http://llm/v1", "m", transport=httpx.MockTransport(down))
    with pytest.raises(DaemonUnavailable, match="unreachable"):
        _ = [p async for p in gone.respond([Message("user", "hi")])]
    for r in (ok, bad, gone):
        await r.aclose()


def test_create_responder_validates() -> None:
    with pytest.raises(Exception, match="needs a URL and a model"):
        create_responder("openai")
    with pytest.raises(Exception, match="unknown responder"):
        create_responder("oracle")


def test_turn_and_barge_in_figures() -> None:
    t = TurnTimes(speech_end=1.0, endpoint=1.5, transcript=1.52, first_text=1.521,
                  first_audio=1.6)  # fmt: skip
    f = t.figures()
    assert (f["end_of_speech_ms"], f["asr_ms"], f["total_ms"]) == (500.0, 20.0, 600.0)
    b = BargeIn(turn=2, speech_start=10.0, onset=10.064, pause_ack=10.066)
    figs = b.figures()
    assert figs["speech_to_vad_ms"] == 64.0 and figs["vad_to_pause_ack_ms"] == 2.0
    assert figs["vad_to_worker_silent_ms"] == 0.0  # no frame arrived after the onset


# -- the shared client-message dispatch, and the drain on SIGTERM ------------------------------


class _StubSession:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def on_text(self, text: str) -> None:
        self.calls.append(("text", text))

    def on_llm(self, text: str, final: bool) -> None:
        self.calls.append(("llm", (text, final)))


def _deps(**config: Any) -> Any:
    from duplexd.config import OrchestratorConfig, WorkerEndpoint
    from duplexd.devkit.fakes import FakeTranscriber, FakeTTS, FakeVAD
    from duplexd.orchestrator.deps import SessionDeps
    from duplexd.orchestrator.registry import StaticRegistry
    from duplexd.orchestrator.routing import RoutingPolicy
    from duplexd.orchestrator.telemetry import OrchTelemetry

    tts = FakeTTS("w0")
    cfg = OrchestratorConfig(workers=[WorkerEndpoint(name="w0", addr=tts.addr)], **config)
    registry = StaticRegistry(cfg.workers, clients=lambda addr: tts)
    deps = SessionDeps(
        config=cfg, registry=registry, policy=RoutingPolicy(), telemetry=OrchTelemetry(),
        vad=FakeVAD, transcriber=FakeTranscriber, responder=lambda hello: BuiltinResponder(),
    )  # fmt: skip
    return deps, tts


@pytest.mark.asyncio
async def test_dispatcher_turns_client_messages_into_session_calls_and_errors() -> None:
    from duplexd.devkit.fakes import RecordingTransport
    from duplexd.errors import BusyError
    from duplexd.orchestrator.dispatch import Dispatcher

    deps, _ = _deps()
    dispatch = Dispatcher(deps)
    transport = RecordingTransport()
    outbox = Outbox(transport)
    outbox.start()
    session: Any = _StubSession()
    for raw in ('{"type": "text", "text": "hi"}', '{"type": "llm", "text": "a", "final": true}',
                '{"type": "ping", "t": 1.5}', '{"type": "hello"}', "{nope"):  # fmt: skip
        assert dispatch.on_json(raw, session, outbox) is True
    assert dispatch.on_json('{"type": "end"}', session, outbox) is False
    await outbox.aclose()
    assert session.calls == [("text", "hi"), ("llm", ("a", True))]
    assert transport.of("pong")[0]["t"] == 1.5
    errors = transport.of("error")
    assert [(e["code"], e["fatal"]) for e in errors] == [("invalid_argument", False)] * 2
    assert "already received" in errors[0]["message"]
    dispatch.admit()
    dispatch.going_away = "orchestrator shutting down"
    with pytest.raises(DaemonUnavailable, match="shutting down: not accepting new sessions"):
        dispatch.admit()
    dispatch.going_away = None
    dispatch.sessions.update({str(i): session for i in range(deps.config.sessions.max)})
    with pytest.raises(BusyError, match="session limit"):
        dispatch.admit()


@pytest.mark.asyncio
async def test_drain_closes_websockets_with_1001_and_refuses_new_sessions() -> None:
    import aiohttp
    from aiohttp.test_utils import TestClient, TestServer

    from duplexd.config import TransportConfig
    from duplexd.orchestrator.server import OrchestratorServer

    webrtc = importlib.util.find_spec("aiortc") is not None
    deps, tts = _deps(transport=TransportConfig(webrtc=webrtc))
    await deps.registry.refresh()
    server = OrchestratorServer(deps)
    async with TestClient(TestServer(server.app)) as client:
        assert (await client.get("/readyz")).status == 200
        ws = await client.ws_connect("/ws")
        await ws.send_json({"type": "hello"})
        ready = await ws.receive_json(timeout=5)
        assert ready["type"] == "ready" and len(server.sessions) == 1
        drain = asyncio.create_task(server.drain(2.0))
        events = []
        while (msg := await ws.receive(timeout=2)).type == aiohttp.WSMsgType.TEXT:
            events.append(json.loads(msg.data))
        await asyncio.wait_for(drain, 1)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.extra == "orchestrator shutting down"
        assert msg.data == 1001 and ws.close_code == 1001  # going away, a clean handshake
        assert events[-1] == {"type": "error", "code": "unavailable", "fatal": True,
                              "message": "orchestrator shutting down"}  # fmt: skip
        assert not server.sessions and tts.ended == tts.sessions != []  # worker session ended
        readyz = await client.get("/readyz")
        assert readyz.status == 503 and (await readyz.json())["draining"] is True
        late = await client.ws_connect("/ws")  # a new session is refused, and told why
        await late.send_json({"type": "hello"})
        refusal = await late.receive_json(timeout=2)
        assert refusal["code"] == "unavailable" and refusal["fatal"] is True
        assert (await late.receive(timeout=2)).type == aiohttp.WSMsgType.CLOSE
        assert late.close_code == 1001
        if webrtc:  # a WHIP offer too: 503 and why
            offer = await client.post("/whip", data=_OPUS_OFFER,
                                      headers={"Content-Type": "application/sdp"})  # fmt: skip
            assert offer.status == 503 and "shutting down" in await offer.text()


_OPUS_OFFER = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", "a=mid:0", "a=sendrecv",
    "a=rtpmap:111 opus/48000/2", "",
])  # fmt: skip


def test_a_deeply_nested_data_channel_message_is_not_a_crash() -> None:
    """WebRTC's keep-alive check reads every data-channel message first: nesting deep enough to
    exhaust the parser's recursion is just not a ping (the dispatcher answers it with an
    error, as on the WebSocket)."""
    pytest.importorskip("aiortc")
    from duplexd.orchestrator.webrtc import _is_ping

    assert _is_ping('{"type": "ping", "t": 1}')
    assert not _is_ping('{"a":' * 200_000 + "1" + "}" * 200_000)
    assert not _is_ping("[" * 200_000 + "]" * 200_000)
