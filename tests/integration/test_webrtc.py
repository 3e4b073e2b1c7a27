"""WebRTC end to end: Debian's headless Chromium talks to a real orchestrator + worker through
the web client the orchestrator serves (WHIP signalling, Opus both ways, events on a data
channel); its fake microphone plays espeak speech from a WAV. Plus the WHIP error paths, peer
cleanup, and Opus on the WebSocket link.

Skips (with the reason) only when Chromium/chromedriver/selenium or aiortc are missing:
`apt-get install chromium chromium-driver`, `uv sync --extra webrtc` (aiortc) and selenium.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from duplexctl.client.ws import LiveConversation, VoiceClient
from duplexd.audio.resample import resample_once
from duplexd.devkit.procs import DaemonProc, daemon
from duplexd.devkit.speech import concat, silence, speech, word_error_rate
from duplexd.errors import InvalidArgument

pytestmark = pytest.mark.integration

QUESTION = "please tell me a story"
INTERRUPTION = "okay stop now and tell me what time it is"  # no pause inside: the VAD stays on

HAVE_AIORTC = importlib.util.find_spec("aiortc") is not None
CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
CHROMEDRIVER = shutil.which("chromedriver")
HAVE_SELENIUM = importlib.util.find_spec("selenium") is not None

needs_aiortc = pytest.mark.skipif(
    not HAVE_AIORTC,
    reason="aiortc is not installed: the orchestrator's WebRTC transport needs the `webrtc` "
    "extra (uv sync --extra webrtc, or pip install 'duplex[webrtc]')",
)
needs_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER and HAVE_SELENIUM),
    reason="headless browser tests need Chromium and chromedriver "
    "(apt-get install chromium chromium-driver) and selenium (dev group): "
    f"chromium={CHROMIUM}, chromedriver={CHROMEDRIVER}, selenium={HAVE_SELENIUM}",
)


@pytest.fixture(scope="module")
def stack(worker: DaemonProc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    """A real orchestrator (WebRTC on, the default) in front of the module's real worker."""
    tmp = tmp_path_factory.mktemp("rtc")
    with daemon("orchestrator", tmp, ["--worker", f"w0={worker.addr}"]) as orch:
        yield orch


def _status(addr: str, api_key: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    resp = httpx.get(f"http://{addr}/status", headers=headers, timeout=5)
    resp.raise_for_status()  # with a key set, /status needs it (401)
    return dict(resp.json())


def _wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


# -- the browser ----------------------------------------------------------------------------------


def _write_wav(path: Path, pcm_16k: np.ndarray) -> Path:
    """The fake microphone: 48 kHz mono s16 (Chromium loops it: pad the end with silence)."""
    pcm = resample_once(pcm_16k, 16_000, 48_000)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48_000)
        out.writeframes(pcm.astype("<i2").tobytes())
    return path


@contextlib.contextmanager
def _chromium(mic_wav: Path, *, allow_mic: bool = True) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="duplex-chromium-")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--use-fake-ui-for-media-stream" if allow_mic else "--deny-permission-prompts",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic_wav}",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=900,1300",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _page(driver: Any, expr: str) -> Any:
    return driver.execute_script(f"return ({expr});")


def _start_talking(driver: Any, addr: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"http://{addr}/")
    _wait_until(lambda: _page(driver, "window.duplex !== undefined"), 10, "the web client")
    driver.find_element(By.ID, "talk").click()
    _wait_until(lambda: _page(driver, "window.duplex.conn === 'connected'"), 30,
                "the WebRTC call to connect")  # fmt: skip


def _events(driver: Any, kind: str) -> list[dict[str, Any]]:
    return list(_page(driver, f"window.duplex.events.filter(e => e.type === '{kind}')"))


def _rtc_stats(driver: Any) -> dict[str, Any]:
    script = "const done = arguments[arguments.length - 1]; window.duplex.rtcStats().then(done);"
    return dict(driver.execute_async_script(script) or {})


def _screenshot(driver: Any, path: Path) -> None:
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")


@needs_aiortc
@needs_browser
def test_browser_hears_the_spoken_reply_and_shows_the_transcript(
    stack: DaemonProc, tmp_path: Path
) -> None:
    mic = _write_wav(tmp_path / "question.wav",
                     concat(silence(1500), speech(QUESTION), silence(45_000)))  # fmt: skip
    with _chromium(mic) as driver:
        _start_talking(driver, stack.addr)
        final = _wait_until(lambda: [e for e in _events(driver, "transcript") if e["final"]], 40,
                            "the final transcript")[0]  # fmt: skip
        assert word_error_rate(QUESTION, final["text"]) <= 0.25, final
        # the reply is heard: the page's AnalyserNode on the remote stream measures it
        _wait_until(lambda: _page(driver, "window.duplex.remoteHeardMs > 2000"), 40,
                    "two seconds of reply audio in the page")  # fmt: skip
        you = driver.find_element("css selector", "#conversation li .you").text
        bot = driver.find_element("css selector", "#conversation li .bot").text
        assert "story" in you.lower(), you
        assert bot.startswith("Once upon a time"), bot
        assert _page(driver, "document.getElementById('state').textContent") == "speaking"
        figures = _page(driver, "window.duplex.turns[1]")
        latency = _events(driver, "latency")[0]
        assert latency["total_ms"] > 0 and figures["total_ms"] == latency["total_ms"]
        assert figures["heard_after_ms"] > 0
        row = driver.find_element("css selector", "#figures tbody tr").text.split()
        assert row[0] == "1" and abs(float(row[1]) - latency["total_ms"]) <= 1, row
        stats = _rtc_stats(driver)
        print("turn 1 in the page:", json.dumps(figures), "webrtc:", json.dumps(stats))
        assert stats["packets_received"] > 100 and stats["packets_lost"] == 0
        _screenshot(driver, tmp_path / "webrtc-reply.png")
        session_id = _page(driver, "window.duplex.sessionId")
        assert session_id in {s["session_id"] for s in _status(stack.addr)["sessions"]}
        driver.find_element("id", "talk").click()  # hang up: DELETE on the WHIP resource
        _wait_until(lambda: not _status(stack.addr)["webrtc"]["peers"], 10, "the call to end")
        assert session_id not in {s["session_id"] for s in _status(stack.addr)["sessions"]}


@contextlib.contextmanager
def _timeline_on_failure(driver: Any) -> Iterator[None]:
    """On a failure, print what the page saw: key events and the levels around each flush."""
    try:
        yield
    except BaseException:
        keys = ("state", "flush", "bargein", "resume", "interrupted", "latency", "transcript")
        events = _page(driver, "window.duplex.events")
        print("page events:", [(e["type"], e.get("state") or e.get("text") or "",
                                round(e["t_page"])) for e in events
                               if e["type"] in keys])  # fmt: skip
        trace = _page(driver, "window.duplex.trace")
        for flush in (e["t_page"] for e in events if e["type"] == "flush"):
            print(f"[t, mic dB, reply dB] around the flush at {flush:.0f}:",
                  [x for x in trace if flush - 800 < x[0] < flush + 300])  # fmt: skip
        raise


@needs_aiortc
@needs_browser
def test_browser_barge_in_stops_the_reply(stack: DaemonProc, tmp_path: Path) -> None:
    # The story starts ~1.5-2.5 s after the question (end of turn + ASR + TTS; slower on a
    # busy machine); the second utterance talks over it 5.5 s after the question ends, which
    # lands in its longest stretch without a pause ("there lived a lighthouse keeper named
    # Ada", 3.1-5.0 s into the story), so the page sees the reply audio stop mid-word.
    mic = _write_wav(tmp_path / "barge-in.wav", concat(
        silence(1500), speech(QUESTION), silence(5500), speech(INTERRUPTION), silence(45_000)
    ))  # fmt: skip
    with _chromium(mic) as driver, _timeline_on_failure(driver):
        _start_talking(driver, stack.addr)
        interrupted = _wait_until(lambda: _events(driver, "interrupted"), 60,
                                  "the talk-over to interrupt the story")[0]  # fmt: skip
        # the barge-in that became the interruption (an echo could have made a false one first)
        barge = _wait_until(lambda: _page(driver, "window.duplex.bargeins.filter(b => "
                                          f"b.flush_at < {interrupted['t_page']}).pop()"),
                            10, "the barge-in measured in the page")  # fmt: skip
        server = _wait_until(lambda: _events(driver, "bargein"), 10, "the bargein event")[-1]
        # the new turn's reply (to the interruption) plays; until then the reply stays silent
        second = _wait_until(lambda: [e for e in _events(driver, "latency") if e["turn"] == 2],
                             40, "the reply to the interruption")[0]  # fmt: skip
        time.sleep(1.0)
        onsets = _page(driver, "window.duplex.remoteOnsets")
        stats = _rtc_stats(driver)
        resumes = len(_events(driver, "resume"))
        _screenshot(driver, tmp_path / "webrtc-barge-in.png")
        driver.find_element("id", "talk").click()  # hang up
        _wait_until(lambda: not _status(stack.addr)["webrtc"]["peers"], 10, "the call to end")
    pause = " (the reply was between words when the talk-over began)" if barge["paused"] else ""
    print(
        f"barge-in stop time measured in the page: {barge['speech_to_silent_ms']:.0f} ms from "
        f"the start of the talk-over to silence, {barge['flush_to_silent_ms']:.0f} ms from the "
        f"flush event to silence{pause}; false barge-ins resumed before it: {resumes}; "
        f"server: {json.dumps(server)}; webrtc: {json.dumps(stats)}"
    )
    assert barge["turn"] == 1 and server["turn"] == 1
    # sanity bounds only: the browser's jitter buffer (30-120 ms here, more on a loaded
    # machine) is most of it; what matters is that the reply stops and stays stopped
    assert barge["flush_to_silent_ms"] < 1000
    assert barge["speech_to_silent_ms"] is not None and barge["speech_to_silent_ms"] < 2000
    assert server["vad_to_client_flush_ms"] == 0.0
    early = [t for t in onsets if barge["stopped_at"] + 50 < t < second["t_page"] - 50]
    assert not early, f"reply audio came back after the barge-in: {early}, {onsets}"


@needs_aiortc
@needs_browser
def test_browser_explains_a_denied_mic_and_reconnects_after_a_drop(
    stack: DaemonProc, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    mic = _write_wav(tmp_path / "quiet.wav", silence(60_000))
    with _chromium(mic, allow_mic=False) as driver:
        driver.get(f"http://{stack.addr}/")
        driver.find_element(By.ID, "talk").click()
        notice = _wait_until(lambda: _page(driver, "!document.getElementById('notice').hidden "
                                           "&& document.getElementById('notice').innerText"),
                             10, "the denied-microphone notice")  # fmt: skip
        assert "Microphone access was denied" in notice, notice
        assert _page(driver, "window.duplex.conn") == "idle"
        assert driver.find_element(By.ID, "talk").text == "Start talking"
    with _chromium(mic) as driver:
        _start_talking(driver, stack.addr)
        first = _page(driver, "window.duplex.sessionId")
        # the orchestrator drops the call (as on a restart or a network cut): the page says
        # so, and reconnects by itself with a new session
        httpx.delete(f"http://{stack.addr}/whip/{first}", timeout=5).raise_for_status()
        t0 = time.monotonic()
        _wait_until(lambda: _page(driver, "window.duplex.reconnects") >= 1, 20, "a reconnect")
        assert "Reconnecting" in _page(driver, "window.duplex.lastNotice")
        _wait_until(lambda: _page(driver, "window.duplex.conn === 'connected' && "
                                  f"window.duplex.sessionId !== {first!r}"),
                    30, "the new session")  # fmt: skip
        print(f"dropped call noticed and reconnected after {time.monotonic() - t0:.1f} s")
        _screenshot(driver, tmp_path / "webrtc-reconnected.png")
        driver.find_element(By.ID, "talk").click()
        _wait_until(lambda: not _status(stack.addr)["webrtc"]["peers"], 10, "the call to end")


@needs_aiortc
@pytest.mark.asyncio
async def test_reply_track_holds_one_frame_and_a_flush_silences_the_next_packet() -> None:
    from duplexd.orchestrator.protocol import pack_audio
    from duplexd.orchestrator.webrtc import ReplyTrack, RtcOutbox, RtcTransport

    track = ReplyTrack()
    outbox = RtcOutbox(RtcTransport(track))
    outbox.start()
    loud = (np.full(960, 8000, np.int16)).tobytes()

    async def packet() -> np.ndarray:
        frame = await track.recv()
        return np.asarray(frame.to_ndarray()).reshape(-1)

    assert not (await packet()).any()  # the sender starts: silence while nothing is queued
    for seq in range(10):  # a reply runs ahead of real time (the worker's lead)
        outbox.audio(pack_audio(seq, 1, loud))
    await asyncio.sleep(0.01)
    # one frame in the track's slot, one in the writer's hand waiting for the slot: no deeper
    assert track._slot is not None and len(outbox._items) == 8
    assert (await packet() == 8000).all()
    await asyncio.sleep(0.01)
    flushed = outbox.flush_audio()  # barge-in
    assert flushed == 9  # 7 in the Outbox, the one in the slot, the one in the writer's hand
    assert not (await packet()).any() and not (await packet()).any()
    assert track.frames_played == 1
    await outbox.aclose(drain_s=0)
    track.stop()


# -- WHIP without a browser (an aiortc peer stands in for one) ------------------------------------

_PEER = r"""
import asyncio, json, sys
import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

async def main(url, key):
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")  # a silent microphone
    channel = pc.createDataChannel("events")
    ready = asyncio.Event()
    def on_message(message):
        event = json.loads(message)
        print(json.dumps(event), flush=True)
        if event["type"] == "ready":
            ready.set()
    channel.on("message", on_message)
    pc.on("connectionstatechange", lambda: print(json.dumps(
        {"type": "_connection", "state": pc.connectionState}), flush=True))
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp"}
    if key:
        headers["Authorization"] = "Bearer " + key
    async with httpx.AsyncClient() as http:
        resp = await http.post(url, content=pc.localDescription.sdp, headers=headers)
    print(json.dumps({"type": "_whip", "status": resp.status_code,
                      "location": resp.headers.get("location")}), flush=True)
    resp.raise_for_status()
    await pc.setRemoteDescription(RTCSessionDescription(resp.text, "answer"))
    await asyncio.wait_for(ready.wait(), 30)
    print(json.dumps({"type": "_ready"}), flush=True)
    while pc.connectionState not in ("closed", "failed"):
        await asyncio.sleep(0.2)
    print(json.dumps({"type": "_ended", "state": pc.connectionState}), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
"""


class _Peer:
    """A Python WebRTC peer in its own process (so a test can kill it without a goodbye)."""

    def __init__(self, url: str, key: str | None = None) -> None:
        args = [sys.executable, "-c", _PEER, url] + ([key] if key else [])
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)  # fmt: skip
        self.events: list[dict[str, Any]] = []

    def wait_for(self, kind: str, timeout_s: float = 30) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        for ev in self.events:
            if ev["type"] == kind:
                return ev
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.events.append(json.loads(line))
            if self.events[-1]["type"] == kind:
                return self.events[-1]
        raise AssertionError(f"peer: no {kind!r} event; got {[e['type'] for e in self.events]}")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


async def _offer(*, audio_codec: str | None = "opus", data_channel: bool = True) -> str:
    """A real aiortc offer: audio restricted to one codec, or none at all."""
    from aiortc import RTCPeerConnection, RTCRtpSender

    pc = RTCPeerConnection()
    try:
        if audio_codec is not None:
            transceiver = pc.addTransceiver("audio", direction="sendrecv")
            caps = RTCRtpSender.getCapabilities("audio").codecs
            transceiver.setCodecPreferences(
                [c for c in caps if c.mimeType.lower() == f"audio/{audio_codec.lower()}"]
            )
        if data_channel:
            pc.createDataChannel("events")
        offer = await pc.createOffer()
        return str(offer.sdp)
    finally:
        await pc.close()


@needs_aiortc
@pytest.mark.asyncio
async def test_whip_refuses_bad_offers_with_clear_messages(stack: DaemonProc) -> None:
    sdp = {"Content-Type": "application/sdp"}
    before = {s["session_id"] for s in _status(stack.addr)["sessions"]}
    async with httpx.AsyncClient(base_url=f"http://{stack.addr}", timeout=20) as http:
        opts = await http.options("/whip")
        assert opts.status_code == 204 and opts.headers["accept-post"] == "application/sdp"
        r = await http.post("/whip", content="hello there", headers=sdp)
        assert r.status_code == 400 and "malformed SDP" in r.text
        r = await http.post("/whip", content="v=0\r\nm=audio x\r\n", headers=sdp)
        assert r.status_code == 400 and "malformed SDP" in r.text, r.text
        r = await http.post("/whip", content=await _offer(audio_codec=None), headers=sdp)
        assert r.status_code == 400 and "no audio" in r.text, r.text
        r = await http.post("/whip", content=await _offer(audio_codec="PCMU"), headers=sdp)
        assert r.status_code == 400 and "Opus is required (offered: PCMU" in r.text, r.text
        good = await _offer()
        r = await http.post("/whip", content=good, headers={"Content-Type": "text/plain"})
        assert r.status_code == 415
        r = await http.post("/whip?modle=x", content=good, headers=sdp)
        assert r.status_code == 400 and "unknown WHIP query parameter(s): modle" in r.text
        r = await http.post("/whip?model=no-such-model", content=good, headers=sdp)
        print("unknown model:", r.status_code, r.text.strip())
        assert r.status_code == 404 and "no-such-model" in r.text, r.text
        assert (await http.delete("/whip/nope")).status_code == 404
        assert (await http.patch("/whip/nope")).status_code == 405
        models = (await http.get("/models")).json()
        assert models["default"] == "piper-en-us-joe" and models["models"][0]["resident"]
        page = await http.get("/")
        assert page.status_code == 200 and 'id="talk"' in page.text
        assert (await http.get("/web/app.js")).status_code == 200
    after = {s["session_id"] for s in _status(stack.addr)["sessions"]}
    assert after <= before, f"refused offers left sessions: {after - before}"


@needs_aiortc
@pytest.mark.asyncio
async def test_whip_api_key_and_idle_timeout(worker: DaemonProc, tmp_path: Path) -> None:
    env = {
        "DUPLEX_API_KEY": "k3y",
        "DUPLEX_SESSIONS__IDLE_TIMEOUT_S": "3",
        "DUPLEX_SESSIONS__MAX": "1",
    }
    with daemon("orchestrator", tmp_path, ["--worker", f"w0={worker.addr}"], env=env) as orch:
        url = f"http://{orch.addr}/whip"
        offer = await _offer()
        async with httpx.AsyncClient(timeout=20) as http:
            for headers in ({}, {"Authorization": "Bearer nope"}):
                r = await http.post(
                    url, content=offer, headers={"Content-Type": "application/sdp", **headers}
                )
                assert r.status_code == 401, r.text  # fmt: skip
                assert r.headers["www-authenticate"].startswith("Bearer")
            assert "wrong API key" in r.text
            assert (await http.options(url)).status_code == 401
        peer = _Peer(url, "k3y")
        try:
            whip = peer.wait_for("_whip")
            assert whip["status"] == 201 and whip["location"].startswith("/whip/")
            ready = peer.wait_for("ready")
            assert ready["input_sample_rate"] == 48_000 and ready["worker"] == "w0"
            async with httpx.AsyncClient(timeout=20) as http:  # sessions.max is 1
                r = await http.post(url, content=offer, headers={
                    "Content-Type": "application/sdp", "Authorization": "Bearer k3y"})  # fmt: skip
            assert r.status_code == 503 and "session limit" in r.text, r.text
            t0 = time.monotonic()
            idle = peer.wait_for("error", 20)  # a silent mic: no speech, no text, no reply
            assert idle["code"] == "idle_timeout" and idle["fatal"], idle
            assert peer.wait_for("_ended", 20)["state"] in ("closed", "failed")
            print(f"idle session ended after {time.monotonic() - t0:.1f} s (idle_timeout_s 3)")
        finally:
            peer.kill()
        assert httpx.get(f"http://{orch.addr}/status", timeout=5).status_code == 401
        _wait_until(lambda: not _status(orch.addr, "k3y")["sessions"], 10, "the session to be gone")


@needs_aiortc
@pytest.mark.asyncio
async def test_vanished_peer_is_cleaned_up_and_other_sessions_keep_running(
    stack: DaemonProc,
) -> None:
    from duplexd.orchestrator.webrtc import MEDIA_TIMEOUT_S

    async with VoiceClient(stack.addr, {}) as other:
        peer = _Peer(f"http://{stack.addr}/whip")
        try:
            await asyncio.to_thread(peer.wait_for, "ready")
            sessions = {s["session_id"]: s["transport"] for s in _status(stack.addr)["sessions"]}
            assert sorted(sessions.values()) == ["webrtc", "ws"], sessions
        finally:
            peer.kill()  # SIGKILL mid-session: no DELETE, no DTLS goodbye
        t0 = time.monotonic()
        await asyncio.to_thread(_wait_until, lambda: not _status(stack.addr)["webrtc"]["peers"],
                                MEDIA_TIMEOUT_S + 15, "the dead peer to be cleaned up")  # fmt: skip
        print(f"vanished peer cleaned up after {time.monotonic() - t0:.1f} s")
        remaining = [s["transport"] for s in _status(stack.addr)["sessions"]]
        assert remaining == ["ws"], remaining
        await other.send_json({"type": "text", "text": "hello"})
        async with asyncio.timeout(30):
            async for item in other.messages():
                if item.event is not None and item.event["type"] == "turn":
                    assert item.event["reply_text"].startswith("Hello")
                    break


# -- Opus on the WebSocket link --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_opus_on_the_websocket_link(stack: DaemonProc) -> None:
    text = "please turn on the lights in the kitchen"
    mic = concat(silence(400), speech(text), silence(300))

    async def script(conv: LiveConversation) -> None:
        conv.say(mic)
        await conv.said()
        await conv.wait_for(lambda e: e["type"] == "turn", 30)

    async with VoiceClient(stack.addr, {}, codec="opus") as client:
        assert client.hello["codec"] == "opus"
        conv = await LiveConversation(client).run(script)
        sent, received = client.bytes_sent, client.bytes_received
    finals = [e["text"] for e in conv.of_type("transcript") if e["final"]]
    assert finals and word_error_rate(text, finals[0]) <= 0.25, finals
    assert conv.of_type("latency")[0]["total_ms"] > 0
    assert conv.frames_received > 50 and conv.speaker.std() > 300  # decoded reply audio
    frames_sent = len(conv.mic) // 960
    print(f"opus link: {sent / frames_sent:.0f} bytes per mic frame (PCM: 640), "
          f"{received / conv.frames_received:.0f} per reply frame (PCM: 1928)")  # fmt: skip
    assert sent / frames_sent < 200 and received / conv.frames_received < 400
    with pytest.raises(InvalidArgument, match="codec"):
        await VoiceClient(stack.addr, {"codec": "g722"}).connect()


# -- WebRTC off, or aiortc missing: 501, and the rest of the port still works -----------------


@pytest.mark.asyncio
async def test_whip_answers_501_when_webrtc_is_off_or_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from duplexd.config import OrchestratorConfig, TransportConfig
    from duplexd.orchestrator.registry import StaticRegistry
    from duplexd.orchestrator.routing import RoutingPolicy
    from duplexd.orchestrator.server import OrchestratorServer
    from duplexd.orchestrator.session import SessionDeps
    from duplexd.orchestrator.telemetry import OrchTelemetry

    def server(config: OrchestratorConfig) -> OrchestratorServer:
        policy = RoutingPolicy()
        deps = SessionDeps.production(config, None, StaticRegistry([]), policy, OrchTelemetry())  # type: ignore[arg-type]
        return OrchestratorServer(deps)

    off = server(OrchestratorConfig(transport=TransportConfig(webrtc=False)))
    monkeypatch.setitem(sys.modules, "duplexd.orchestrator.webrtc", None)  # as without aiortc
    missing = server(OrchestratorConfig())
    for srv, expected in ((off, "transport.webrtc: false"), (missing, "duplex[webrtc]")):
        async with TestClient(TestServer(srv.app)) as client:
            r = await client.post("/whip", data="v=0", headers={"Content-Type": "application/sdp"})
            assert r.status == 501 and expected in await r.text()
            assert (await client.options("/whip")).status == 501
            assert (await client.get("/models")).status == 200
            assert "Start talking" in await (await client.get("/")).text()
            assert (await (await client.get("/status")).json())["webrtc"]["available"] is False
