"""Unit tests of the orchestrator's small pieces: protocol, outbox, jitter buffer, responders."""

from __future__ import annotations

import asyncio
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
    ],
)
def test_bad_messages_name_the_problem(raw: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_client_json(raw)


def test_messages_parse() -> None:
    assert isinstance(parse_client_json('{"type": "text", "text": "hi"}'), TextMsg)
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
