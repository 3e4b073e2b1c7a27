"""The orchestrator's edge, in-process over real sockets: aiohttp's TestServer serving the real
`OrchestratorServer` with the devkit fakes behind it (no worker process, no ASR model).

What a client may make the orchestrator do (LLM endpoints: only the operator's), what the HTTP
routes show and to whom (API key, transcripts), what a client that never reads costs (bounded
send queues, then a close with a reason), and that bad input always gets an answer (an error
event or a close reason), never a silent close.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, get_port_socket

from duplexd.config import (
    AuthConfig,
    LlmConfig,
    LlmEndpoint,
    OrchestratorConfig,
    ServerConfig,
    SessionsConfig,
    TransportConfig,
    WorkerEndpoint,
    repo_root,
)
from duplexd.devkit.fakes import FakeTranscriber, FakeTTS, FakeVAD
from duplexd.errors import InvalidArgument
from duplexd.orchestrator.deps import SessionDeps, responders
from duplexd.orchestrator.llm import LlmNotAllowed, LlmTarget, resolve_llm
from duplexd.orchestrator.protocol import ERROR_CODES, LlmChoice
from duplexd.orchestrator.registry import StaticRegistry
from duplexd.orchestrator.routing import RoutingPolicy
from duplexd.orchestrator.server import OrchestratorServer
from duplexd.orchestrator.telemetry import OrchTelemetry

pytestmark = [pytest.mark.timeout(30)]


@dataclass
class Edge:
    """A served orchestrator: its HTTP/WS client, the server object and the fake worker."""

    client: TestClient[web.Request, web.Application]
    server: OrchestratorServer
    tts: FakeTTS

    async def hello(self, hello: dict[str, Any] | None = None, **kw: Any) -> Any:
        ws = await self.client.ws_connect("/ws", **kw)
        await ws.send_json({"type": "hello", **(hello or {})})
        return ws


def _config(**sections: Any) -> OrchestratorConfig:
    sections.setdefault("transport", TransportConfig(webrtc=False))
    return OrchestratorConfig(workers=[WorkerEndpoint(name="w0", addr="fake://w0")], **sections)


@pytest_asyncio.fixture
async def edge_factory() -> AsyncIterator[Callable[..., Awaitable[Edge]]]:
    clients: list[TestClient[web.Request, web.Application]] = []

    async def make(
        config: OrchestratorConfig | None = None, *, speech: tuple[int, int] | None = None,
        texts: tuple[str, ...] = (), send_buffer: int | None = None,
    ) -> Edge:  # fmt: skip
        cfg = config or _config()
        tts = FakeTTS("w0", frames_per_unit=3)
        registry = StaticRegistry(cfg.workers, clients=lambda addr: tts)
        await registry.refresh()
        deps = SessionDeps(
            config=cfg, registry=registry, policy=RoutingPolicy(), telemetry=OrchTelemetry(),
            vad=lambda: FakeVAD([speech] if speech else []),
            transcriber=lambda: FakeTranscriber(texts), responder=responders(cfg),
        )  # fmt: skip
        server = OrchestratorServer(deps)

        def listen(host: str, port: int, family: socket.AddressFamily) -> socket.socket:
            sock = get_port_socket(host, port, family)
            if send_buffer is not None:  # accepted connections inherit it
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
            return sock

        client = TestClient(TestServer(server.app, socket_factory=listen))
        await client.start_server()
        clients.append(client)
        return Edge(client, server, tts)

    yield make
    for client in clients:
        await client.close()


Make = Callable[..., Awaitable[Edge]]


async def _events_until(ws: Any, stop: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                return events
            events.append(json.loads(msg.data))
            if stop(events[-1]):
                return events


async def _refused(ws: Any) -> tuple[dict[str, Any], Any]:
    """A refused hello: the fatal error event, then the close message."""
    first = await ws.receive(timeout=5)
    assert first.type == aiohttp.WSMsgType.TEXT, first
    closing = await ws.receive(timeout=5)
    return json.loads(first.data), closing


# -- item 1: a client chooses among the operator's LLM endpoints only ------------------------


@dataclass
class FakeLlm:
    """An OpenAI-compatible endpoint (a labelled test double): what reached it, and how."""

    seen: list[tuple[str, str | None]] = field(default_factory=list)  # (path, authorization)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path, request.headers.get("Authorization")))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {"choices": [{"delta": {"content": "Paris is the capital."}}]}
        await resp.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
        return resp


@pytest_asyncio.fixture
async def llms() -> AsyncIterator[tuple[tuple[str, FakeLlm], tuple[str, FakeLlm]]]:
    """The operator's LLM and an internal address a client would like the orchestrator to call."""
    servers, out = [], []
    for _ in range(2):
        fake = FakeLlm()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", fake.completions)
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        out.append((str(server.make_url("/v1")), fake))
    yield out[0], out[1]
    for server in servers:
        await server.close()


@pytest.mark.asyncio
async def test_a_hello_cannot_send_the_operators_key_to_its_own_url(
    edge_factory: Make, llms: tuple[tuple[str, FakeLlm], tuple[str, FakeLlm]]
) -> None:
    (operator_url, operator), (internal_url, internal) = llms
    fast = LlmEndpoint(url=operator_url, model="small", api_key="fast-secret")
    llm = LlmConfig(kind="openai", url=operator_url, model="m", api_key="op-secret",
                    endpoints={"fast": fast})  # fmt: skip
    cfg = _config(llm=llm)
    edge = await edge_factory(cfg)
    for choice in (
        {"kind": "openai", "url": internal_url, "model": "m"},  # the operator's key, elsewhere
        {"url": internal_url + "/"},
        {"kind": "openai", "endpoint": "nope"},
        {"kind": "openai", "endpoint": "fast", "url": internal_url},
        {"kind": "openai", "endpoint": "fast", "model": "big"},  # only the endpoint's model
    ):
        ws = await edge.hello({"llm": choice})
        error, closing = await _refused(ws)
        assert (error["code"], error["fatal"]) == ("llm_not_allowed", True), (choice, error)
        assert "secret" not in error["message"] and operator_url not in error["message"]
        assert closing.type == aiohttp.WSMsgType.CLOSE
    assert internal.seen == [] and operator.seen == []  # nothing was called at all
    assert not edge.server.sessions and edge.tts.sessions == []  # refused before a session
    # allowed: by name, by the exact url of an entry, the operator's default; each key goes
    # to its own url only; a client may bring its own key for an allowed endpoint
    allowed: list[tuple[dict[str, str] | None, str]] = [
        ({"endpoint": "fast"}, "fast-secret"),
        ({"kind": "openai", "url": operator_url + "/", "model": "m"}, "op-secret"),
        ({"kind": "openai"}, "op-secret"),
        (None, "op-secret"),  # no `llm`: the operator's configured default
        ({"endpoint": "fast", "api_key": "mine"}, "mine"),
    ]
    for ok, key in allowed:
        ws = await edge.hello({"llm": ok} if ok else {})
        assert (await ws.receive_json(timeout=5))["type"] == "ready"
        await ws.send_json({"type": "text", "text": "capital of France?"})
        turn = (await _events_until(ws, lambda e: e["type"] == "turn"))[-1]
        assert turn["reply_text"] == "Paris is the capital.", turn
        assert operator.seen[-1] == ("/v1/chat/completions", f"Bearer {key}")
        await ws.close()
    assert internal.seen == []


def test_resolve_llm_keeps_the_operators_default_and_refuses_everything_else() -> None:
    cfg = LlmConfig(kind="builtin", endpoints={
        "a": LlmEndpoint(url="http://a/v1", model="ma", api_key="ka"),
        "b": LlmEndpoint(url="http://b/v1", model="mb"),
    })  # fmt: skip
    assert resolve_llm(None, cfg) == LlmTarget("builtin")
    assert resolve_llm(LlmChoice(), cfg) == LlmTarget("builtin")
    assert resolve_llm(LlmChoice(kind="push"), cfg) == LlmTarget("push")
    assert resolve_llm(LlmChoice(endpoint="a"), cfg) == LlmTarget("openai", "http://a/v1", "ma",
                                                                  "ka")  # fmt: skip
    assert resolve_llm(LlmChoice(url="http://b/v1/"), cfg).url == "http://b/v1"
    with pytest.raises(LlmNotAllowed, match="no default LLM endpoint"):
        resolve_llm(LlmChoice(kind="openai"), cfg)  # no operator url configured
    with pytest.raises(LlmNotAllowed, match="not one of the LLM endpoints"):
        resolve_llm(LlmChoice(url="http://169.254.169.254/latest"), cfg)
    with pytest.raises(InvalidArgument, match="takes no endpoint"):
        resolve_llm(LlmChoice(kind="push", url="http://a/v1"), cfg)
    legacy = LlmConfig(kind="openai", url="http://llm/v1", model="m", api_key="k")
    assert resolve_llm(None, legacy) == LlmTarget("openai", "http://llm/v1", "m", "k")


# -- item 4: the HTTP routes and the API key; transcripts in /status -------------------------


@pytest.mark.asyncio
async def test_with_a_key_only_the_probes_and_the_page_are_open(edge_factory: Make) -> None:
    edge = await edge_factory(_config(auth=AuthConfig(api_key="k3y")))
    http = edge.client
    for path in ("/healthz", "/readyz", "/", "/web/app.js"):
        assert (await http.get(path)).status == 200, path
    for path in ("/status", "/metrics", "/models", "/web/../status", "/healthz/../status"):
        resp = await http.get(path)
        assert resp.status == 401, path
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert "transcript" not in await resp.text()
    assert (await http.get("/status", headers={"Authorization": "Bearer nope"})).status == 401
    for headers in ({"Authorization": "Bearer k3y"}, {"X-Api-Key": "k3y"}):
        for path in ("/status", "/metrics", "/models"):
            assert (await http.get(path, headers=headers)).status == 200, (path, headers)


@pytest.mark.asyncio
async def test_status_shows_no_transcripts_unless_the_operator_asks(edge_factory: Make) -> None:
    for shown in (False, True):
        cfg = _config(server=ServerConfig(status_transcripts=shown))
        edge = await edge_factory(cfg, speech=(0, 300), texts=("my secret is 1234",))
        ws = await edge.hello()
        assert (await ws.receive_json(timeout=5))["type"] == "ready"
        for _ in range(60):  # 1.2 s of mic audio: 300 ms of (scripted) speech, then silence
            await ws.send_bytes(bytes(640))
        await _events_until(ws, lambda e: e["type"] == "turn")
        status = await (await edge.client.get("/status")).json()
        (session,) = status["sessions"]
        assert session["turn"] == 1
        assert ("1234" in json.dumps(status)) is shown
        assert ("transcript_tail" in session) is shown
        await ws.close()


# -- item 8: a client that never reads ------------------------------------------------------


def _tiny_receive_buffer(addr_info: Any) -> socket.socket:
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=type_, proto=proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


@pytest.mark.asyncio
async def test_a_client_that_never_reads_is_closed_with_a_reason_and_costs_bounded_memory(
    edge_factory: Make,
) -> None:
    bound, audio_bound = 64, 20
    sessions = SessionsConfig(send_queue_events=bound, send_queue_audio_frames=audio_bound)
    edge = await edge_factory(_config(sessions=sessions), send_buffer=4096)
    edge.tts.frames_per_unit = 50  # a long reply: audio keeps coming while the client stalls
    connector = aiohttp.TCPConnector(socket_factory=_tiny_receive_buffer)
    async with aiohttp.ClientSession(connector=connector) as http:
        ws = await http.ws_connect(edge.client.make_url("/ws"))
        await ws.send_json({"type": "hello"})
        assert (await ws.receive_json(timeout=5))["type"] == "ready"
        (conn,) = edge.server._ws.connections
        outbox = conn.outbox
        await ws.send_json({"type": "text", "text": "tell me a story"})
        most_events = most_audio = sent = 0
        async with asyncio.timeout(20):  # from here on the client never reads: only writes
            while outbox.overflowed is None:
                for _ in range(50):
                    await ws.send_json({"type": "ping", "t": sent})
                    sent += 1
                await asyncio.sleep(0.001)
                most_events = max(most_events, outbox.queued_events)
                most_audio = max(most_audio, outbox.queued_audio)
        assert most_events <= bound and most_audio <= audio_bound
        assert outbox.queued_events <= 1 and outbox.queued_audio == 0  # only the goodbye left
        # the client reads at last: what was on its way, the reason, then a close with it
        events = await _events_until(ws, lambda e: e["type"] == "error")
        error = events[-1]
        assert (error["code"], error["fatal"]) == ("slow_client", True), events[-3:]
        assert "client not reading" in error["message"]
        closing = await ws.receive(timeout=10)
        assert closing.type == aiohttp.WSMsgType.CLOSE, closing
        assert closing.data == 1008 and "client not reading" in str(closing.extra)
        assert sent > len(events)  # it really did not read: most pongs were never queued
    async with asyncio.timeout(10):
        while edge.server.sessions:  # noqa: ASYNC110  # the session is closed, worker session too
            await asyncio.sleep(0.01)
    assert edge.tts.ended == edge.tts.sessions
    # and the orchestrator goes on serving
    ws = await edge.hello()
    assert (await ws.receive_json(timeout=5))["type"] == "ready"
    await ws.send_json({"type": "text", "text": "hello"})
    assert (await _events_until(ws, lambda e: e["type"] == "turn"))[-1]["reply_text"]


# -- item 5: a burst of pushed text over the socket ------------------------------------------


@pytest.mark.asyncio
async def test_a_2000_message_push_burst_keeps_the_socket_and_gets_answers(
    edge_factory: Make,
) -> None:
    edge = await edge_factory(_config(llm=LlmConfig(push_max_pending_chars=4000)))
    edge.tts.frame_interval_s = 0.02  # the speech is slower than the burst
    ws = await edge.hello({"llm": {"kind": "push"}})
    assert (await ws.receive_json(timeout=5))["type"] == "ready"
    reading = asyncio.create_task(_events_until(ws, lambda e: e["type"] == "pong"))
    for i in range(2000):  # ~16 000 characters, four times what may wait to be spoken
        await ws.send_json({"type": "llm", "text": f"word{i} "})
    await ws.send_json({"type": "ping", "t": 1})
    events = await reading
    refused = [e for e in events if e["type"] == "error"]
    assert refused and {e["code"] for e in refused} == {"resource_exhausted"}
    assert all(e["fatal"] is False for e in refused)
    assert not ws.closed and len(edge.server.sessions) == 1  # refused, said so, still serving


# -- item 10: bad hellos and deep nesting get an error event ---------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("first", "code"),
    [
        ("[" * 100_000 + "]" * 100_000, "invalid_argument"),
        ('{"type": "hello", "x": ' + "[" * 50_000 + "]" * 50_000 + "}", "invalid_argument"),
        ('{"type": "hello", "llm": {"kind": "openai"}}', "llm_not_allowed"),
        (
            '{"type": "hello", "llm": {"kind": "openai", "url": "http://10.0.0.1/"}}',
            "llm_not_allowed",
        ),
        ('{"type": "hello", "llm": {"kind": "push", "url": "http://x/"}}', "invalid_argument"),
        ('{"type": "hello", "llm": "openai"}', "invalid_argument"),
        ('{"type": "hello", "sample_rate": "fast"}', "invalid_argument"),
        ('{"type": "hello", "model": "no-such-model"}', "not_found"),
        ('{"type": "hello", "codec": ["opus"]}', "invalid_argument"),
        ('{"type": "text", "text": "hi"}', "invalid_argument"),
        ("null", "invalid_argument"),
        (b"\x00" * 640, "invalid_argument"),
    ],
)
async def test_every_bad_hello_gets_a_fatal_error_event(
    edge_factory: Make, first: str | bytes, code: str
) -> None:
    edge = await edge_factory()
    ws = await edge.client.ws_connect("/ws")
    await (ws.send_bytes(first) if isinstance(first, bytes) else ws.send_str(first))
    error, closing = await _refused(ws)
    assert (error["type"], error["code"], error["fatal"]) == ("error", code, True), error
    assert closing.type == aiohttp.WSMsgType.CLOSE
    assert not edge.server.sessions


@pytest.mark.asyncio
async def test_deep_nesting_after_the_hello_is_an_error_not_a_close(edge_factory: Make) -> None:
    edge = await edge_factory()
    ws = await edge.hello()
    assert (await ws.receive_json(timeout=5))["type"] == "ready"
    await ws.send_str('{"type": "ping", "t": ' + "[" * 100_000 + "]" * 100_000 + "}")
    await ws.send_json({"type": "ping", "t": 2})
    events = await _events_until(ws, lambda e: e["type"] == "pong")
    assert [e["code"] for e in events if e["type"] == "error"] == ["invalid_argument"]


# -- item 10: the error table documents exactly the codes there are --------------------------


def test_the_protocol_doc_lists_every_error_code_the_orchestrator_sends() -> None:
    doc = (repo_root() / "docs" / "protocol.md").read_text()
    table = doc.split("## Errors", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+)`", table, flags=re.MULTILINE))
    documented |= set(re.findall(r"^\| `[a-z_]+`, `([a-z_]+)`", table, flags=re.MULTILINE))
    assert documented == set(ERROR_CODES)
    sources = (repo_root() / "src" / "duplexd" / "orchestrator").glob("*.py")
    literal = re.compile(r"""code=["']([a-z_]+)["']|["']code["']: ["']([a-z_]+)["']""")
    used = {a or b for path in sources for a, b in literal.findall(path.read_text())}
    assert used <= set(ERROR_CODES), used - set(ERROR_CODES)
