"""Seeded fuzzing of the orchestrator's WebSocket edge, in-process over real sockets.

aiohttp's TestServer serves the real `OrchestratorServer` (dispatch, protocol, Outbox, Session)
with the devkit fakes behind it. A few hundred generated inputs, in seconds: malformed and
random JSON, wrong types, huge strings, deep nesting, lone surrogates, binary frames of wrong
sizes, messages before the hello. Checked: every bad input gets an error event (or, for one
the socket itself refuses, a close code and reason), nothing is answered `internal` (a bug),
and afterwards the daemon still serves a well-formed session.

The seed is printed; `DUPLEX_FUZZ_SEED=N pytest tests/unit/test_fuzz_ws.py` replays a run.
"""

from __future__ import annotations

import json
import os
import random
import string
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from duplexd.config import OrchestratorConfig, TransportConfig, WorkerEndpoint
from duplexd.devkit.served import served_orchestrator
from duplexd.orchestrator.server import OrchestratorServer

pytestmark = [pytest.mark.timeout(120)]

SEED = int(os.environ.get("DUPLEX_FUZZ_SEED", "20261204"))
BEFORE_HELLO = 80  # each on a new connection
IN_SESSION = 240  # spread over a few sessions
MAX_MSG = 1 << 20  # the orchestrator's WebSocket message limit


@dataclass(frozen=True)
class Case:
    """One input and what must come of it: `error` (a non-fatal error event), `none` (no
    error), or, before the hello, a fatal error event then a close; `close` (the socket
    refuses the message itself: a close code and reason, no event)."""

    label: str
    payload: str | bytes
    expect: str


# -- generators ---------------------------------------------------------------------------------


def _junk_text(rng: random.Random, n: int) -> str:
    alphabet = string.printable + "éß中😀\u2028\x00"
    return "".join(rng.choice(alphabet) for _ in range(n))


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.randint(-(2**70), 2**70)
    if kind == 1:
        return rng.choice([0.5, -1e300, 3.0, 1e-9])
    if kind == 2:
        return _junk_text(rng, rng.randrange(0, 40))
    if kind == 3:
        return rng.choice([True, False])
    if kind == 4:
        return None
    if kind in (5, 6):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {_junk_text(rng, 5): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


# values each field's type refuses (pydantic's lax mode accepts "1" for an int, 1 for a bool…)
_NOT_STR = [1, 2.5, [], {}, True, ["a"], {"a": 1}]
_NOT_BOOL = [[], {}, "maybe", 2, 0.5, ["x"]]
_NOT_INT = ["fast", [], {}, 1.5, None]
_NOT_NUMBER = ["soon", [], {}, "NaN"]


def _bad_json(rng: random.Random) -> Case:
    """One malformed, mistyped or oversized JSON message (never a valid one)."""
    pick = rng.randrange(14)
    if pick == 0:
        raw = json.dumps({"type": "text", "text": "hi"})
        cut = rng.randrange(1, len(raw) - 1)
        return Case("truncated JSON", raw[:cut], "error")
    if pick == 1:
        return Case("not JSON", "{" + _junk_text(rng, rng.randrange(1, 60)), "error")
    if pick == 2:
        top: Any = rng.choice([[], [1, 2], 3, "text", None, True, 2.5])
        return Case("JSON but not an object", json.dumps(top), "error")
    if pick == 3:
        kind: Any = rng.choice([None, 5, [], {}, True])
        return Case("type not a string", json.dumps({"type": kind, "text": "x"}), "error")
    if pick == 4:
        t = rng.choice(["dance", "", "HELLO", "text ", "pong", _junk_text(rng, 8)])
        return Case("unknown type", json.dumps({"type": t}), "error")
    if pick == 5:
        depth = rng.choice([33, 200, 5_000, 150_000])  # at most 900 kB: under the 1 MiB limit
        opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
        body = opener * depth + "1" + closer * depth
        return Case(f"nested {depth}", '{"type": "ping", "t": ' + body + "}", "error")
    if pick == 6:
        msg = {"type": "text", "text": rng.choice(_NOT_STR)}
        return Case("text wrong type", json.dumps(msg), "error")
    if pick == 7:
        msg = {"type": "llm", "text": "a", "final": rng.choice(_NOT_BOOL)}
        return Case("llm.final wrong type", json.dumps(msg), "error")
    if pick == 8:
        bad = rng.choice(_NOT_NUMBER)
        raw = '{"type":"ping","t":NaN}' if bad == "NaN" else json.dumps({"type": "ping", "t": bad})
        return Case("ping.t wrong type", raw, "error")
    if pick == 9:
        n = rng.choice([4001, 20_000, 900_000])
        return Case(f"text of {n} chars", json.dumps({"type": "text", "text": "a" * n}), "error")
    if pick == 10:
        return Case("empty text", json.dumps({"type": "text", "text": ""}), "error")
    if pick == 11:
        extra = {"type": "ping", _junk_text(rng, 6) + "x": _value(rng)}
        return Case("unknown field", json.dumps(extra), "error")
    if pick == 12:
        return Case("lone surrogate", '{"type": "text", "text": "a\\udc00b"}', "error")
    return Case("random JSON object", json.dumps({"type": "text", **_junk_obj(rng)}), "error")


def _junk_obj(rng: random.Random) -> dict[str, Any]:
    return {"text": _value(rng, 2), "junk" + _junk_text(rng, 3): _value(rng)}


def _bad_hello(rng: random.Random) -> Case:
    pick = rng.randrange(8)
    fields: dict[str, Any] = {"type": "hello"}
    if pick == 0:
        fields["sample_rate"] = rng.choice([*_NOT_INT, 8000, 44100, -1, 0, 2**40])
    elif pick == 1:
        fields["version"] = rng.choice([0, 2, 99, "one", []])
    elif pick == 2:
        fields[rng.choice(["model", "voice", "language", "api_key"])] = rng.choice(_NOT_STR)
    elif pick == 3:
        fields["llm"] = rng.choice([
            "openai", 5, [], {"kind": "gpt"}, {"kind": "openai"},
            {"kind": "openai", "url": "http://169.254.169.254/latest/meta-data"},
            {"url": "http://127.0.0.1:6379/"}, {"endpoint": "anything"},
            {"kind": "push", "url": "http://x/"}, {"kind": "builtin", "api_key": "k"},
            {"kind": "openai", "extra": 1},
        ])  # fmt: skip
    elif pick == 4:
        fields["codec"] = rng.choice(["mp3", "", None, ["opus"], 1])
    elif pick == 5:
        fields["aec"] = rng.choice(_NOT_BOOL)
    elif pick == 6:
        fields[_junk_text(rng, 5) + "z"] = _value(rng)
    else:
        fields["model"] = "m" * rng.choice([201, 5000])
    return Case(f"bad hello ({pick})", json.dumps(fields), "error")


def _before_hello(rng: random.Random) -> Case:
    pick = rng.randrange(6)
    if pick == 0:
        n = rng.choice([0, 1, 639, 640, 641, 1920, 70_000])
        return Case(f"binary {n} first", rng.randbytes(n), "error")
    if pick == 1:
        msg = rng.choice([{"type": "text", "text": "hi"}, {"type": "ping"}, {"type": "end"},
                          {"type": "llm", "text": "a"}])  # fmt: skip
        return Case(f"{msg['type']} before hello", json.dumps(msg), "error")
    if pick == 2:
        return Case("over 1 MiB", json.dumps({"type": "hello", "voice": "v" * MAX_MSG}), "close")
    if pick == 3:
        return _bad_hello(rng)
    return _bad_json(rng)


def _in_session(rng: random.Random) -> Case:
    pick = rng.randrange(10)
    if pick == 0:
        n = rng.choice([0, 1, 320, 639, 641, 1280, 1920, 4000, 65_536])
        return Case(f"binary {n}", rng.randbytes(n), "frame")
    if pick == 1:
        return Case("good frame", bytes(640), "none")
    if pick == 2:
        return Case("second hello", json.dumps({"type": "hello"}), "error")
    if pick == 3:
        return Case("llm without push mode", json.dumps({"type": "llm", "text": "x"}), "error")
    if pick == 4:
        text = rng.choice(["hello", "tell me a story", _junk_text(rng, 30) or "x"])
        return Case("good text", json.dumps({"type": "text", "text": text}), "none")
    if pick == 5:
        return Case("good ping", json.dumps({"type": "ping", "t": rng.random()}), "none")
    return _bad_json(rng)


# -- the served orchestrator --------------------------------------------------------------------


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[TestClient[Any, Any], OrchestratorServer]]:
    cfg = OrchestratorConfig(transport=TransportConfig(webrtc=False),
                             workers=[WorkerEndpoint(name="w0", addr="fake://w0")])  # fmt: skip
    async with served_orchestrator(cfg) as pair:
        yield pair


async def _send(ws: Any, payload: str | bytes) -> None:
    await (ws.send_bytes(payload) if isinstance(payload, bytes) else ws.send_str(payload))


def _pong(marker: float) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["type"] == "pong" and e["t"] == marker


async def _until(ws: Any, stop: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    events = []
    while True:
        msg = await ws.receive(timeout=10)
        if msg.type == aiohttp.WSMsgType.BINARY:
            continue
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        events.append(json.loads(msg.data))
        if stop(events[-1]):
            return events


@pytest.mark.asyncio
async def test_fuzzed_input_always_gets_an_answer_and_the_daemon_keeps_serving(
    served: tuple[TestClient[Any, Any], OrchestratorServer],
) -> None:
    client, server = served
    rng = random.Random(SEED)
    print(f"fuzz seed {SEED} (DUPLEX_FUZZ_SEED replays it)")
    internal: list[tuple[str, dict[str, Any]]] = []

    # before the hello: each input on a new connection, a fatal error (or a close reason)
    for i in range(BEFORE_HELLO):
        case = _before_hello(rng)
        ws = await client.ws_connect("/ws")
        await _send(ws, case.payload)
        first = await ws.receive(timeout=10)
        if case.expect == "close":  # refused by the socket: a close code that says why
            assert first.type == aiohttp.WSMsgType.CLOSE, (i, case.label, first)
            assert first.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG, (i, case.label, first)
            continue
        assert first.type == aiohttp.WSMsgType.TEXT, (i, case.label, first)
        error = json.loads(first.data)
        assert error["type"] == "error" and error["fatal"] is True, (i, case.label, error)
        if error["code"] == "internal":
            internal.append((case.label, error))
        closing = await ws.receive(timeout=10)
        assert closing.type == aiohttp.WSMsgType.CLOSE, (i, case.label, closing)
    assert not server.sessions

    # in a session: each input, then a ping as a marker; exactly one error per bad input
    done = 0
    while done < IN_SESSION:
        ws = await client.ws_connect("/ws")
        await ws.send_json({"type": "hello"})
        assert (await ws.receive_json(timeout=10))["type"] == "ready"
        bad_frames = 0
        for _ in range(min(60, IN_SESSION - done)):
            case, done = _in_session(rng), done + 1
            marker = rng.random()
            await _send(ws, case.payload)
            await ws.send_json({"type": "ping", "t": marker})
            events = await _until(ws, _pong(marker))
            errors = [e for e in events if e["type"] == "error"]
            internal += [(case.label, e) for e in errors if e["code"] == "internal"]
            assert all(e["fatal"] is False for e in errors), (done, case.label, errors)
            expect = case.expect
            if expect == "frame":  # a wrong-sized frame: reported, the first five per session
                size = len(case.payload)
                expect = "none" if size == 640 else "error" if bad_frames < 5 else "none"
                bad_frames += size != 640
            want = 1 if expect == "error" else 0
            assert len(errors) == want, (done, case.label, case.payload[:200], errors)
        await ws.close()
    assert not internal, internal

    # and a well-formed session still works, start to finish
    ws = await client.ws_connect("/ws")
    await ws.send_json({"type": "hello"})
    assert (await ws.receive_json(timeout=10))["type"] == "ready"
    await ws.send_json({"type": "text", "text": "hello"})
    turn = (await _until(ws, lambda e: e["type"] == "turn"))[-1]
    assert turn["reply_text"].startswith("Hello!")
    await ws.send_json({"type": "end"})
    assert (await ws.receive(timeout=10)).type == aiohttp.WSMsgType.CLOSE
