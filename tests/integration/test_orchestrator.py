"""Real orchestrator + real workers, real VAD/ASR/Piper, driven over the WebSocket protocol
with speech synthesized by a voice the ASR was not tuned on (espeak-ng)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import pytest_asyncio
from aiohttp import web

from duplexctl.client.ws import LiveConversation, VoiceClient, run_file_conversation
from duplexd.devkit.procs import DaemonProc, daemon, free_port, start_daemon
from duplexd.devkit.speech import concat, silence, speech, word_error_rate
from duplexd.errors import AuthError, DuplexError

pytestmark = pytest.mark.integration

PLAN = "Sure, here is the plan for today. First we test, then we ship it."
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def stack_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    with daemon("worker", tmp_path_factory.mktemp("stack-worker")) as worker:
        yield worker


@pytest.fixture(scope="module")
def stack(
    stack_worker: DaemonProc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonProc]:
    tmp = tmp_path_factory.mktemp("stack")
    with daemon("orchestrator", tmp, ["--worker", f"w0={stack_worker.addr}"]) as orch:
        yield orch


async def _text_turn(client: VoiceClient, text: str) -> list[dict[str, Any]]:
    """Send typed text; collect events until that turn's `turn` event."""
    await client.send_json({"type": "text", "text": text})
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        async for item in client.messages():
            if item.event is not None:
                events.append(item.event)
                if item.event["type"] == "turn":
                    return events
    return events


@pytest.mark.asyncio
async def test_spoken_question_gets_transcript_and_spoken_reply(stack: DaemonProc) -> None:
    mic = concat(silence(400), speech("please turn on the lights in the kitchen"), silence(300))
    conv = await run_file_conversation(stack.addr, mic, tail_ms=3500)
    finals = [e for e in conv.of_type("transcript") if e["final"]]
    assert (
        finals
        and word_error_rate("please turn on the lights in the kitchen", finals[0]["text"]) <= 0.25
    )
    assert any(not e["final"] for e in conv.of_type("transcript")), "no partial transcripts"
    assert conv.frames_received > 50  # reply audio, each frame checked 1920 bytes on unpack
    states = [e["state"] for e in conv.of_type("state")]
    assert states[:3] == ["listening", "speaking", "listening"] or "speaking" in states
    latency = conv.of_type("latency")[0]
    assert latency["total_ms"] > 0 and latency["asr_decode_ms"] > 0
    replies = [e["text"] for e in conv.of_type("reply") if not e["final"]]
    assert replies[0].startswith("You said")
    # the speaker track holds the reply, on the mic's timeline
    assert len(conv.speaker) == len(conv.mic)
    assert conv.speaker.std() > 300


def _story_then(interruption: Any, *, gap_ms: int = 1500) -> Any:
    ask = concat(silence(300), speech("please tell me a story"))
    # end of turn (~0.5 s) + ASR + first audio (~0.1 s), then `gap_ms` of the story playing
    return concat(ask, silence(650 + gap_ms), interruption, silence(300))


@pytest.mark.asyncio
async def test_barge_in_flushes_and_silences_worker_within_50ms(stack: DaemonProc) -> None:
    mic = _story_then(speech("wait, what time is it now"))
    conv = await run_file_conversation(stack.addr, mic, tail_ms=4000)
    flushes = conv.of_type("flush")
    assert flushes, f"no flush; events: {[e['type'] for e in conv.events]}"
    barge = conv.of_type("bargein")[0]
    print("barge-in figures:", json.dumps(barge))  # reported by `pytest -s` and in CI logs
    assert barge["vad_to_worker_silent_ms"] <= 50
    assert barge["vad_to_pause_ack_ms"] <= 50
    assert conv.of_type("interrupted") and not conv.of_type("resume")
    flush_t, flush_turn = flushes[0]["t_ms"], flushes[0]["turn"]
    late = [t for t, turn in conv.audio_log if turn == flush_turn and t > flush_t]
    assert not late, f"{len(late)} frames of the interrupted reply arrived after the flush"
    turns = conv.of_type("turn")
    assert turns[0]["interrupted"] and turns[0]["reply_text"].startswith("Once upon a time")
    finals = [e["text"].lower() for e in conv.of_type("transcript") if e["final"]]
    assert any("time" in t for t in finals[1:]), finals
    assert len(turns) >= 2 and turns[1]["reply_text"].startswith("It is")


@pytest.mark.asyncio
async def test_false_interruption_resumes(stack: DaemonProc) -> None:
    mic = _story_then(speech("ah"))  # a short non-word: the VAD fires, ASR finds no words
    conv = await run_file_conversation(stack.addr, mic, tail_ms=2500)
    trace = [(e["type"], e.get("state") or e.get("text") or e.get("event"), e["t_ms"])
             for e in conv.events if e["type"] != "reply"]  # fmt: skip
    assert conv.of_type("flush"), f"the onset should have paused the reply: {trace}"
    assert conv.of_type("resume"), f"not resumed: {[e['type'] for e in conv.events]}"
    assert not conv.of_type("interrupted")
    resumed_at = conv.of_type("resume")[0]["t_ms"]
    assert any(t > resumed_at for t, _ in conv.audio_log), "no audio after RESUME"
    states = [e["state"] for e in conv.of_type("state")]
    assert states.count("barged_in") == 1 and states[-1] in ("speaking", "listening")


@pytest.mark.asyncio
async def test_pushed_llm_text_is_spoken_while_it_streams(stack: DaemonProc) -> None:
    async with VoiceClient(stack.addr, {"llm": {"kind": "push"}}) as client:
        assert client.ready["llm"] == "push"
        words = [
            "Sure,",
            "here",
            "is",
            "the",
            "plan",
            "for",
            "today.",
            "First",
            "we",
            "test,",
            "then",
            "we",
            "ship",
            "it.",
        ]
        audio_before_final = asyncio.Event()
        final_sent = asyncio.Event()

        async def host() -> None:
            for word in words:
                await client.send_json({"type": "llm", "text": word + " "})
                await asyncio.sleep(0.12)
            final_sent.set()
            await client.send_json({"type": "llm", "text": "", "final": True})

        pusher = asyncio.create_task(host())
        async with asyncio.timeout(30):
            async for item in client.messages():
                if item.audio is not None and not final_sent.is_set():
                    audio_before_final.set()
                if item.event and item.event["type"] == "turn":
                    assert "plan for today" in item.event["reply_text"]
                    break
        await pusher
    assert audio_before_final.is_set(), "speech should start before the LLM finished"


@pytest_asyncio.fixture
async def fake_llm() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A local OpenAI-compatible streaming endpoint: the external LLM (a labelled test double)."""
    requests: list[dict[str, Any]] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != "Bearer test-key":
            return web.json_response({"error": "bad key"}, status=401)
        requests.append(await request.json())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for piece in ["The capital ", "of France ", "is Paris. ", "It is lovely in spring."]:
            chunk = {"choices": [{"delta": {"content": piece}}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(0.1)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1", requests
    await runner.cleanup()


@pytest.mark.asyncio
async def test_openai_compatible_llm_bridge(
    stack_worker: DaemonProc, tmp_path: Path, fake_llm: tuple[str, list[dict[str, Any]]]
) -> None:
    url, requests = fake_llm
    # the operator's allow-list: clients choose among these, never an address of their own
    env = {"DUPLEX_LLM__ENDPOINTS": json.dumps(
        {"tiny": {"url": url, "model": "tiny", "api_key": "test-key"}})}  # fmt: skip
    with daemon("orchestrator", tmp_path, ["--worker", f"w0={stack_worker.addr}"],
                env=env) as orch:  # fmt: skip
        async with VoiceClient(orch.addr, {"llm": {"endpoint": "tiny"}}) as client:
            events = await _text_turn(client, QUESTION)
        turn = events[-1]
        assert "Paris" in turn["reply_text"]
        assert requests[0]["stream"] is True and requests[0]["model"] == "tiny"
        assert requests[0]["messages"][-1] == {
            "role": "user",
            "content": "What is the capital of France?",
        }
        # the same endpoint named by its exact url (as `duplexctl talk --llm-url` does)
        hello = {"llm": {"kind": "openai", "url": url, "model": "tiny"}}
        async with VoiceClient(orch.addr, hello) as client:
            assert "Paris" in (await _text_turn(client, QUESTION))[-1]["reply_text"]
        # a client's own wrong key: a clear error event, and the session keeps serving
        bad = {"llm": {"endpoint": "tiny", "api_key": "nope"}}
        async with VoiceClient(orch.addr, bad) as client:
            events = await _text_turn(client, "hello")
        errors = [e for e in events if e["type"] == "error"]
        assert errors and "rejected the API key" in errors[0]["message"]
        # any other url is refused before anything is sent anywhere
        served = len(requests)
        for choice in ({"kind": "openai", "url": url.replace("/v1", "/admin"), "model": "x"},
                       {"kind": "openai", "url": f"http://{orch.addr}/status"}):  # fmt: skip
            with pytest.raises(DuplexError, match="not one of the LLM endpoints"):
                await VoiceClient(orch.addr, {"llm": choice}).connect()
        assert len(requests) == served


@pytest.mark.asyncio
async def test_malformed_input_gets_error_events_not_a_crash(stack: DaemonProc) -> None:
    async with VoiceClient(stack.addr, {}) as client:
        assert client.ws is not None
        await client.ws.send_bytes(b"\x00" * 100)  # not a 20 ms frame
        await client.ws.send_str("{not json")
        await client.send_json({"type": "dance"})
        await client.send_json({"type": "hello"})
        events = await _text_turn(client, "hello")
    errors = [e for e in events if e["type"] == "error"]
    assert [e["code"] for e in errors][:4] == [
        "malformed_frame",
        "invalid_argument",
        "invalid_argument",
        "invalid_argument",
    ]
    assert "expected 640" in errors[0]["message"]
    assert "unknown message type 'dance'" in errors[2]["message"]
    assert events[-1]["reply_text"].startswith("Hello")  # and it still answers


@pytest.mark.asyncio
async def test_bad_hello_is_refused(stack: DaemonProc) -> None:
    with pytest.raises(Exception, match="sample_rate 8000 not supported"):
        await VoiceClient(stack.addr, {"sample_rate": 8000}).connect()


@pytest.mark.asyncio
async def test_http_endpoints(stack: DaemonProc) -> None:
    async with httpx.AsyncClient(base_url=f"http://{stack.addr}") as http:
        assert (await http.get("/healthz")).json()["ok"] is True
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["workers"] == ["w0"]
        status = (await http.get("/status")).json()
        assert status["workers"][0]["healthy"] and status["workers"][0]["resident_models"]
        metrics = (await http.get("/metrics")).text
    assert "duplex_orch_turn_ms_bucket" in metrics and "duplex_orch_bargein_total" in metrics


@pytest.mark.asyncio
async def test_api_key_required(tmp_path: Path) -> None:
    env = {"DUPLEX_API_KEY": "k3y"}
    with (
        daemon("worker", tmp_path, env=env) as w,
        daemon("orchestrator", tmp_path, ["--worker", f"w0={w.addr}"], env=env) as orch,
    ):
        with pytest.raises(AuthError, match="wrong API key"):
            await VoiceClient(orch.addr, {"api_key": "nope"}).connect()
        with pytest.raises(AuthError, match="missing API key"):
            await VoiceClient(orch.addr, {}).connect()
        async with VoiceClient(orch.addr, {"api_key": "k3y"}) as client:
            assert client.ready["worker"] == "w0"


@pytest.mark.asyncio
async def test_killed_worker_moves_the_session(tmp_path: Path) -> None:
    with (
        daemon("worker", tmp_path, ["--name", "a"]) as a,
        daemon("worker", tmp_path, ["--name", "b"]) as b,
        daemon(
            "orchestrator", tmp_path, ["--worker", f"a={a.addr}", "--worker", f"b={b.addr}"]
        ) as orch,
    ):
        async with VoiceClient(orch.addr, {}) as client:
            first = client.ready["worker"]
            victim = a if first == "a" else b
            os.kill(victim.proc.pid, signal.SIGKILL)
            victim.proc.wait()
            events = await _text_turn(client, "hello")
            errors = [e for e in events if e["type"] == "error"]
            moved = [e for e in events if e["type"] == "worker"]
            if errors:  # the kill hit the reply: error, then the session moves
                assert moved and moved[0]["worker"] != first
            events = await _text_turn(client, "hello again")
            assert events[-1]["reply_text"].startswith("Hello")


@pytest.mark.asyncio
async def test_audio_is_recorded_only_when_asked(tmp_path: Path) -> None:
    record = tmp_path / "rec"
    with (
        daemon("worker", tmp_path) as w,
        daemon(
            "orchestrator", tmp_path, ["--worker", f"w0={w.addr}", "--record", str(record)]
        ) as orch,
    ):
        conv = await run_file_conversation(orch.addr, concat(silence(300), speech("hello")),
                                           tail_ms=3500)  # fmt: skip
    sid = conv.events[0]["session_id"]
    user, bot = record / f"{sid}-user.wav", record / f"{sid}-bot.wav"
    import wave

    with wave.open(str(user)) as u, wave.open(str(bot)) as b:
        assert u.getframerate() == 16_000 and u.getnframes() > 16_000
        assert b.getframerate() == 48_000 and b.getnframes() > 0
    assert not list(tmp_path.glob("*.wav")), "nothing else may be written"


@pytest.mark.asyncio
@pytest.mark.parametrize("client_aec", [True, False])
async def test_echo_guard_keeps_the_bot_from_interrupting_itself(
    stack: DaemonProc, client_aec: bool
) -> None:
    """A speakerphone leaks the bot's voice back into the mic at -20 dB. A client that says it
    cancels echo (aec: true) but doesn't, lets the bot barge in on itself; one that says it
    can't (aec: false) gets the server's echo guard, and the story plays on."""

    async def script(conv: LiveConversation) -> None:
        conv.say(concat(silence(300), speech("please tell me a story")))
        await conv.wait_for(lambda e: e["type"] == "latency", 20)
        await conv.sleep_ms(4000)

    async with VoiceClient(stack.addr, {"aec": client_aec}) as client:
        conv = await LiveConversation(client, echo_db=-20.0).run(script)
    flushes = conv.of_type("flush")
    if client_aec:
        assert flushes, "the leaked echo should have triggered a (false) barge-in"
    else:
        assert not flushes, f"the echo guard let the bot interrupt itself: {flushes}"
        assert conv.frames_received > 150  # the story kept playing


@pytest.mark.asyncio
async def test_sigterm_drains_open_sessions_with_going_away(tmp_path: Path) -> None:
    """SIGTERM with a WebSocket open: the client gets a fatal error event and a 1001 close
    frame with a reason (not a dropped connection, 1006), its worker session ends, and the
    orchestrator exits well inside its grace period (server.shutdown_grace_s, default 3 s)."""
    from duplexd.devkit.procs import start_daemon
    from duplexd.rpc.client import TTSClient

    grace_s = 3.0  # the default: below `duplexctl down`'s 5 s SIGKILL
    with daemon("worker", tmp_path) as worker:
        orch = start_daemon("orchestrator", tmp_path, ["--worker", f"w0={worker.addr}"])
        try:
            async with VoiceClient(orch.addr, {}) as client, TTSClient(worker.addr) as tts:
                assert client.ws is not None
                assert (await tts.capabilities()).metrics.active_sessions == 1
                await _text_turn(client, "hello")  # a live session, a worker session
                t0 = asyncio.get_running_loop().time()
                os.kill(orch.proc.pid, signal.SIGTERM)
                events: list[dict[str, Any]] = []
                async with asyncio.timeout(grace_s + 2):
                    while True:
                        msg = await client.ws.receive()
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        events.append(json.loads(msg.data))
                closed_after = asyncio.get_running_loop().time() - t0
                assert msg.type == aiohttp.WSMsgType.CLOSE, (msg, orch.log_text()[-2000:])
                assert msg.data == 1001 and client.ws.close_code == 1001, msg
                assert msg.extra == "orchestrator shutting down"
                errors = [e for e in events if e["type"] == "error"]
                assert errors, events
                assert errors[-1]["code"] == "unavailable" and errors[-1]["fatal"] is True
                assert "shutting down" in errors[-1]["message"]
                rc = await asyncio.to_thread(orch.proc.wait, grace_s + 5)
                exited_after = asyncio.get_running_loop().time() - t0
                print(f"SIGTERM: closed after {closed_after:.2f} s, exited after "
                      f"{exited_after:.2f} s")  # fmt: skip
                assert rc == 0, orch.log_text()[-2000:]
                assert closed_after < 1.0 and exited_after < grace_s
                assert (await tts.capabilities()).metrics.active_sessions == 0
        finally:
            orch.stop(grace_s=1.0)


@pytest.mark.asyncio
async def test_a_restarted_worker_answers_the_next_turn(tmp_path: Path) -> None:
    """The worker restarts between turns (as `duplexctl up` restarts a crashed one, on the same
    port): it has no session for us any more, and the next turn is answered all the same."""
    port = str(free_port())
    worker = start_daemon("worker", tmp_path, ["--port", port])
    try:
        with daemon("orchestrator", tmp_path, ["--worker", f"w0=127.0.0.1:{port}"]) as orch:
            async with VoiceClient(orch.addr, {}) as client:
                assert (await _text_turn(client, "hello"))[-1]["reply_text"].startswith("Hello")
                worker.stop()
                worker = start_daemon("worker", tmp_path, ["--port", port])
                await _until_ready(orch.addr)  # the orchestrator has seen it come back
                events = await _text_turn(client, "what time is it")
                assert events[-1]["reply_text"].startswith("It is"), events
                assert not [e for e in events if e["type"] == "error"], events
                events = await _text_turn(client, "thank you")
                assert events[-1]["reply_text"] == "You're welcome!"
    finally:
        worker.stop()


@pytest.mark.asyncio
async def test_an_idle_caller_keeps_its_worker_session(tmp_path: Path) -> None:
    """The worker ends sessions idle for worker.session_idle_timeout_s; the orchestrator's
    keepalive (sessions.worker_keepalive_s, below it) keeps a quiet caller's session alive."""
    from duplexd.rpc.client import TTSClient

    cfg = tmp_path / "worker.yaml"
    cfg.write_text("worker:\n  session_idle_timeout_s: 1.0\n")
    keepalive = {"DUPLEX_SESSIONS__WORKER_KEEPALIVE_S": "0.3"}
    with (
        daemon("worker", tmp_path, ["--config", str(cfg)]) as worker,
        daemon("orchestrator", tmp_path, ["--worker", f"w0={worker.addr}"], env=keepalive) as orch,
    ):
        async with VoiceClient(orch.addr, {}) as client, TTSClient(worker.addr) as tts:
            await asyncio.sleep(3.0)  # three idle timeouts, no turn
            assert (await tts.capabilities()).metrics.active_sessions == 1
            events = await _text_turn(client, "hello")
            assert events[-1]["reply_text"].startswith("Hello")
            assert not [e for e in events if e["type"] == "error"], events
        assert "session idle timeout" not in worker.log_text()


async def _until_ready(addr: str, timeout_s: float = 30.0) -> None:
    async with httpx.AsyncClient(base_url=f"http://{addr}") as http, asyncio.timeout(timeout_s):
        while (await http.get("/readyz")).status_code != 200:  # noqa: ASYNC110  # another process
            await asyncio.sleep(0.2)
