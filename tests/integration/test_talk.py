"""`duplexctl talk` end to end: real daemons, real PortAudio on JACK's dummy backend, real files.

This machine has no sound card. JACK's dummy backend is a real audio server with a real clock
(its capture ports deliver silence), so the device loop — PortAudio callbacks, the jitter
buffer, the echo canceller — runs as it would on a laptop. Each JACK server here gets its own
name (JACK_DEFAULT_SERVER), so parallel runs never share one and "no device" stays true for
any other name.

`talk` runs as a child process, as a user runs it: stdin, exit code, stdout and stderr are
the real ones, and PortAudio's state is its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr

from duplexctl.audio.aec import EchoCanceller
from duplexctl.audio.devices import resolve_device
from duplexctl.audio.live import SILENT_MIC_MESSAGE
from duplexctl.audio.streams import AudioIO, Microphone, Speaker
from duplexctl.audio.wavfile import read_wav, to_link_rate, write_wav
from duplexctl.client.embedded import EmbeddedStack
from duplexctl.supervise.state import DaemonRecord, FleetState, StateStore, process_created
from duplexd.audio.resample import resample_once
from duplexd.devkit.procs import free_port
from duplexd.devkit.speech import concat, silence, speech, word_error_rate

pytestmark = pytest.mark.integration

QUESTION = "please turn on the lights in the kitchen"

# The lead registers `talk` on the real app; here it hangs off a local one.
_TALK = (
    "import typer\n"
    "from duplexctl.cli.talk import talk\n"
    "app = typer.Typer()\n"
    "app.command()(talk)\n"
    "app()\n"
)


def _talk(
    *args: str, jack: str, stdin: str = "", timeout_s: float = 60.0, state: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`talk` as a user runs it; `state`: the state dir of `duplexctl up` it sees (none else)."""
    env = {k: v for k, v in os.environ.items() if k != "DUPLEX_ORCHESTRATOR"}
    no_state = Path(tempfile.gettempdir()) / f"duplex-test-no-state-{os.getpid()}"
    env |= {"COLUMNS": "200", "JACK_DEFAULT_SERVER": jack,
            "DUPLEX_STATE_DIR": str(state or no_state)}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-c", _TALK, *args],
        input=stdin, capture_output=True, text=True, env=env, timeout=timeout_s, check=False,
    )  # fmt: skip


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """The embedded stack helper itself: up for the module, and nothing left behind after."""
    embedded = EmbeddedStack(tmp_path_factory.mktemp("embedded"))
    with embedded:
        pids = embedded.pids
        assert len(pids) == 2
        yield embedded
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.fixture(scope="module")
def stack(embedded: EmbeddedStack) -> str:
    return embedded.addr


@pytest.fixture(scope="module")
def jack() -> Iterator[str]:
    """A JACK server with the dummy backend (48 kHz, 10 ms periods); yields its name."""
    exe = shutil.which("jackd")
    if exe is None:
        pytest.skip("jackd is not installed (apt-get install jackd2): no audio server to test on")
    import sounddevice as sd

    name = f"duplex-test-{os.getpid()}"
    cmd = [exe, "-n", name, "--no-realtime", "-d", "dummy", "-r", "48000", "-p", "480"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    old = os.environ.get("JACK_DEFAULT_SERVER")
    os.environ["JACK_DEFAULT_SERVER"] = name
    try:
        _wait_for_jack(sd, proc)
        yield name
    finally:
        sd._terminate()  # PortAudio's JACK client must go before the server does
        proc.terminate()
        proc.wait(10)
        if old is None:
            os.environ.pop("JACK_DEFAULT_SERVER", None)
        else:
            os.environ["JACK_DEFAULT_SERVER"] = old
        sd._initialize()


def _wait_for_jack(sd: Any, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.poll() is None, "jackd exited at start"
        sd._terminate()
        sd._initialize()
        if any("JACK" in api["name"] and api["devices"] for api in sd.query_hostapis()):
            return
        time.sleep(0.2)
    pytest.fail("PortAudio never saw the JACK server")


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """espeak speech with silence around it, at 22.05 kHz: `talk` must convert it."""
    pcm = concat(silence(600), speech(QUESTION), silence(800))
    x = soxr.resample(pcm.astype(np.float32) / 32768, 16_000, 22_050)
    path = tmp_path_factory.mktemp("wav") / "q.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(22_050)
        wav.writeframes(np.clip(x * 32767, -32768, 32767).astype("<i2").tobytes())
    return path


# -- devices -----------------------------------------------------------------------------------


def test_list_devices_shows_the_jack_device(jack: str) -> None:
    out = _talk("--list-devices", jack=jack)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if "JACK Audio Connection Kit" in line)
    assert row.split()[:3] == ["0", "*", "system"]


def test_typed_turn_plays_the_reply_on_the_output_device(
    stack: str, jack: str, tmp_path: Path
) -> None:
    events = tmp_path / "ev.jsonl"
    out = _talk(
        "--text", "--url", stack, "--output", "system", "--events", str(events),
        jack=jack, stdin="hello\n",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    played = re.search(r"played (\d+\.\d) s of audio, (\d+) underruns", out.stdout)
    assert played, out.stdout
    assert float(played[1]) >= 2.0  # the greeting is ~5 s; it all went to the JACK port
    assert "you  › hello" in out.stdout and "bot  › Hello!" in out.stdout
    evs = _events(events)
    turn = next(e for e in evs if e["type"] == "turn")
    assert turn["reply_text"].startswith("Hello!") and not turn["interrupted"]


def _up_state(embedded: EmbeddedStack, root: Path, *, orch_addr: str | None = None) -> Path:
    """The state file `duplexctl up` writes, naming the module's real daemons (their pids,
    process start times and addresses): what `say`, `models` and `dash` find a stack by."""
    store = StateStore(root)
    worker, orch = embedded.children
    records = [
        DaemonRecord(name, kind, log="", addr=addr, pid=child.pid, state="running",
                     pid_created=process_created(child.pid))
        for name, kind, addr, child in (
            ("tts-worker@0", "worker", str((worker.info() or {})["addr"]), worker),
            ("orchestrator", "orchestrator", orch_addr or embedded.addr, orch),
        )
    ]  # fmt: skip
    store.write(FleetState(supervisor_pid=os.getpid(), phase="ready", daemons=records))
    return root


def test_talk_finds_the_stack_up_started_on_any_port(
    embedded: EmbeddedStack, tmp_path: Path
) -> None:
    """No --url: the orchestrator `duplexctl up` started (here not on 8080); --url NAME; and a
    hint that never says "start it" while one runs."""
    state = _up_state(embedded, tmp_path / "state")
    out = _talk("--text", jack="unused", stdin="hello\n", state=state)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "bot  › Hello!" in out.stdout
    assert "embedded" not in out.stderr  # it did not start a private stack
    named = _talk("--text", "--url", "orchestrator", jack="unused", stdin="hello\n", state=state)
    assert named.returncode == 0 and "bot  › Hello!" in named.stdout, named.stderr
    worker = _talk("--text", "--url", "tts-worker@0", jack="unused", state=state)
    assert worker.returncode == 2
    assert "'tts-worker@0' is a worker, not an orchestrator" in worker.stderr
    unknown = _talk("--text", "--url", "orch", jack="unused", state=state)
    assert unknown.returncode == 2
    assert "unknown orchestrator 'orch'; known orchestrators: orchestrator" in unknown.stderr
    elsewhere = _talk("--text", "--url", f"127.0.0.1:{free_port()}", jack="unused", state=state)
    assert elsewhere.returncode == 8, elsewhere.stderr
    hint = " ".join(elsewhere.stderr.split())
    assert f"`duplexctl up` runs orchestrator at {embedded.addr}: `--url orchestrator`" in hint
    assert "start" not in hint.split("hint:")[1]
    # up's orchestrator runs but does not answer where the state says: no "start it" either
    mute = _up_state(embedded, tmp_path / "mute", orch_addr=f"127.0.0.1:{free_port()}")
    stuck = _talk("--text", jack="unused", state=mute)
    assert stuck.returncode == 8, stuck.stderr
    hint = " ".join(stuck.stderr.split())
    assert "`duplexctl up` runs orchestrator there" in hint and "but it does not answer" in hint
    assert "start" not in hint.split("hint:")[1]


def test_spoken_mode_on_a_silent_mic_says_so(stack: str, jack: str, tmp_path: Path) -> None:
    """JACK's dummy capture is digital silence: exactly what a muted or denied mic gives."""
    events = tmp_path / "ev.jsonl"
    out = _talk("--url", stack, "--duration", "6", "--events", str(events), jack=jack)
    assert out.returncode == 0, out.stdout + out.stderr
    assert SILENT_MIC_MESSAGE.split(":")[0] in " ".join(out.stdout.split())
    assert "played 0.0 s of audio" in out.stdout
    assert "system (JACK Audio Connection Kit)" in out.stderr
    assert [e["type"] for e in _events(events)][:2] == ["ready", "state"]


def test_spoken_turn_through_the_devices_with_the_speaker_echoing_into_the_mic(
    stack: str, jack: str, tmp_path: Path
) -> None:
    """The whole loop on real devices: a user (another JACK client) speaks into talk's mic,
    the reply plays on talk's speaker, which is wired back into the same mic. Echo
    cancellation must keep the bot from hearing itself: a reply, and no barge-in."""
    import sounddevice as sd

    events = tmp_path / "ev.jsonl"
    user = resample_once(concat(speech(QUESTION), silence(500)), 16_000, 48_000)
    start = [False]
    played = [0]

    def play_user(outdata: Any, frames: int, t: Any, status: Any) -> None:
        block = user[played[0] : played[0] + frames] if start[0] else user[:0]
        played[0] += len(block)
        outdata[:] = 0
        outdata[: len(block), 0] = block

    user_stream = sd.OutputStream(
        samplerate=48_000, blocksize=480, device=0, channels=1, dtype="int16", callback=play_user
    )
    user_stream.start()
    before = _jack_ports()
    user_port = next(p for p, c in before.items() if ":out" in p and "system:playback_1" in c)
    proc = subprocess.Popen(
        [sys.executable, "-c", _TALK, "--url", stack, "--duration", "11", "--events", str(events)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "200", "JACK_DEFAULT_SERVER": jack},
    )  # fmt: skip
    try:
        talk_in, talk_out = _wait_for_new_ports(before, proc)
        for cmd in (
            ["jack_disconnect", "system:capture_1", talk_in],
            ["jack_connect", talk_out, talk_in],  # the speaker's sound reaches the mic
            ["jack_connect", user_port, talk_in],
        ):
            subprocess.run(cmd, check=True, capture_output=True)
        start[0] = True
        out, err = proc.communicate(timeout=40)
    finally:
        proc.kill()
        user_stream.stop()
        user_stream.close()
    assert proc.returncode == 0, out + err
    evs = _events(events)
    final = next(e for e in evs if e["type"] == "transcript" and e["final"])
    assert word_error_rate(QUESTION, final["text"]) <= 0.25
    assert any(e["type"] == "reply" for e in evs) and any(e["type"] == "latency" for e in evs)
    speaking = next(e["t_ms"] for e in evs if e.get("state") == "speaking")
    assert speaking < 11_000 - 2_500, "the reply played for less than 2.5 s"
    assert not [e for e in evs if e["type"] in ("bargein", "flush")], "the bot heard itself"
    assert float(re.findall(r"played (\d+\.\d) s", out)[0]) >= 2.0


def _wait_for_new_ports(
    before: dict[str, set[str]], proc: subprocess.Popen[str]
) -> tuple[str, str]:
    """(mic input port, first speaker output port) of the `talk` process, once it opened them."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        new = {p: c for p, c in _jack_ports().items() if p not in before}
        ins = sorted(p for p in new if ":in" in p)
        outs = sorted(p for p, c in new.items() if ":out" in p and "system:playback_1" in c)
        if ins and outs:
            return ins[0], outs[0]
        time.sleep(0.1)
    pytest.fail("talk never opened its JACK ports")


def test_no_audio_device_exits_9(tmp_path: Path) -> None:
    out = _talk("--url", "127.0.0.1:1", jack=f"duplex-none-{os.getpid()}")
    assert out.returncode == 9, out.stdout + out.stderr
    assert "error: no audio input device found" in out.stderr
    assert "--text" in out.stderr  # the hint names a way to go on without a mic


def _jack_ports() -> dict[str, set[str]]:
    """Every JACK port and what it is connected to (`jack_lsp -c`)."""
    out = subprocess.run(["jack_lsp", "-c"], capture_output=True, text=True, check=True).stdout
    ports: dict[str, set[str]] = {}
    current = ""
    for line in out.splitlines():
        if line.startswith(" "):
            ports[current].add(line.strip())
        else:
            current = line.strip()
            ports[current] = set()
    return ports


@pytest.mark.asyncio
async def test_echo_cancellation_removes_the_speaker_and_keeps_the_user(jack: str) -> None:
    """The speaker is wired into the mic (the laptop's echo path), and a second JACK client
    talks into the mic too (the user, barging in). The mic must carry the user, not the bot."""
    import sounddevice as sd

    aec = EchoCanceller()
    speaker = Speaker(resolve_device("system", "output"), aec=aec)
    mic = Microphone(resolve_device("system", "input"), aec=aec)
    io = AudioIO(speaker, mic)
    io.start()
    assert io.duplex
    before = _jack_ports()
    user_16k = speech("what is the weather like tomorrow")
    user = resample_once(concat(silence(3500), user_16k), 16_000, 48_000)
    played = [0]

    def play_user(outdata: Any, frames: int, t: Any, status: Any) -> None:
        block = user[played[0] : played[0] + frames]
        played[0] += frames
        outdata[:] = 0
        outdata[: len(block), 0] = block

    user_stream = sd.OutputStream(
        samplerate=48_000, blocksize=480, device=0, channels=1, dtype="int16", callback=play_user
    )
    user_stream.start()
    try:
        after = _jack_ports()
        user_port = next(p for p in after if p not in before and ":out" in p)
        mic_in = next(p for p, c in before.items() if ":in" in p and "system:capture_1" in c)
        spk_out = next(
            p for p, c in before.items() if "system:playback_1" in c and not p.startswith("sys")
        )
        for cmd in (
            ["jack_disconnect", "system:capture_1", mic_in],
            ["jack_connect", spk_out, mic_in],
            ["jack_connect", user_port, mic_in],
        ):
            subprocess.run(cmd, check=True, capture_output=True)
        played[0] = 0
        bot_16k = speech(
            "the quick brown fox jumps over the lazy dog and keeps on running far away"
        )
        bot = resample_once(bot_16k, 16_000, 48_000)
        heard = await _play_and_record(speaker, mic, bot[: len(bot) // 960 * 960])
    finally:
        user_stream.stop()
        user_stream.close()
        io.close()

    def level(x: np.ndarray, a_s: float = 0.0, b_s: float = 1e9) -> float:
        part = x[int(a_s * 16_000) : int(b_s * 16_000)].astype(np.float64)
        return float(np.sqrt(np.mean(part**2)))

    assert aec.error is None and aec.near_blocks > 300
    assert level(heard, 1.0, 3.4) < 0.03 * level(bot_16k)  # the bot alone: echo ≥ 30 dB down
    assert level(heard, 3.6, 5.2) > 0.3 * level(user_16k)  # the user, over the bot: kept


async def _play_and_record(speaker: Speaker, mic: Microphone, bot: np.ndarray) -> np.ndarray:
    import asyncio

    got: list[np.ndarray] = []

    async def record() -> None:
        async for frame in mic.frames():
            got.append(np.frombuffer(frame, "<i2"))

    recorder = asyncio.create_task(record())
    try:
        for i in range(0, len(bot), 960):
            # the server's pace (a little ahead); the PortAudio thread drains: poll
            while speaker.jitter.depth_ms >= 60:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            speaker.push(bot[i : i + 960].tobytes())
        await speaker.drain()
        await asyncio.sleep(0.5)
    finally:
        recorder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await recorder
    return np.concatenate(got)


# -- file mode ---------------------------------------------------------------------------------


def test_file_conversation_writes_the_speaker_track_and_events(
    stack: str, question_wav: Path, tmp_path: Path
) -> None:
    wav_out, events = tmp_path / "out.wav", tmp_path / "ev.jsonl"
    out = _talk(
        "--input", str(question_wav), "--output", str(wav_out), "--events", str(events),
        "--url", stack, jack="unused",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    with wave.open(str(question_wav)) as wav:
        in_s = wav.getnframes() / wav.getframerate()
    with wave.open(str(wav_out)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (48_000, 1, 2)
        speaker = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
    assert speaker.std() > 300  # the reply is in it
    assert not speaker[: int(in_s * 48_000) // 2].any()  # nothing played while the user spoke
    evs = _events(events)
    turn = next(e for e in evs if e["type"] == "turn")  # the reply played to its end...
    assert turn["heard"] == turn["reply_text"] and not turn["interrupted"]
    assert f"bot  › {turn['heard']}" in out.stdout
    quiet_s = len(speaker) / 48_000 - turn["t_ms"] / 1000  # ...then --tail 2 s of quiet
    assert 2.0 <= quiet_s < 3.5, quiet_s
    latency = next(e for e in evs if e["type"] == "latency")  # at its first audio
    assert turn["t_ms"] - latency["t_ms"] > 4000  # a fixed 4 s tail after the file cut it
    kinds = {e["type"] for e in evs}
    assert {"ready", "transcript", "latency", "reply"} <= kinds
    final = next(e for e in evs if e["type"] == "transcript" and e["final"])
    assert word_error_rate(QUESTION, final["text"]) <= 0.25
    latency = next(e for e in evs if e["type"] == "latency")
    assert latency["total_ms"] > 0 and latency["end_of_speech_ms"] > 0
    assert "you  › " in out.stdout and "turn 1: end of speech" in out.stdout


def _wav(path: Path, pcm_16k: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16_000)
        wav.writeframes(pcm_16k.astype("<i2").tobytes())
    return path


def test_file_mode_caps_the_wait_for_a_reply_and_says_so(stack: str, tmp_path: Path) -> None:
    """A reply longer than --max-wait (the ~30 s story) is cut there, and it says so."""
    story = _wav(tmp_path / "story.wav", concat(silence(400), speech("tell me a story")))
    started = time.monotonic()
    out = _talk("--input", str(story), "--max-wait", "3", "--url", stack, jack="unused")
    took = time.monotonic() - started
    assert out.returncode == 0, out.stdout + out.stderr
    said = " ".join(out.stderr.split())
    assert "stopped 3 s after the input ended (--max-wait) with a reply still going" in said
    cut = next(ln for ln in out.stdout.splitlines() if ln.startswith("bot  › Once upon a time,"))
    assert cut.endswith(" …")  # what came of it so far, marked unfinished
    assert took < 30  # not the whole story (~30 s)


def test_file_mode_shows_what_was_heard_of_an_interrupted_reply(stack: str, tmp_path: Path) -> None:
    """Talking over the story 1.5 s in: the bot's line is the words that played and a cut
    mark, in the console and the events file, not every clause the server had sent."""
    ask = concat(silence(300), speech("please tell me a story"))
    mic = concat(ask, silence(650 + 1500), speech("wait, what time is it now"), silence(300))
    events = tmp_path / "ev.jsonl"
    out = _talk(
        "--input", str(_wav(tmp_path / "q.wav", mic)), "--events", str(events), "--url", stack,
        jack="unused",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    turns = [e for e in _events(events) if e["type"] == "turn"]
    story = turns[0]
    assert story["interrupted"], turns
    assert story["heard"].startswith("Once upon a time,") and story["heard"].endswith(" ⟂")
    assert "named Ada." in story["reply_text"]  # the server sent that clause's first frame...
    assert "named Ada." not in story["heard"]  # ...it was not heard to its end
    bot_lines = [ln for ln in out.stdout.splitlines() if ln.startswith("bot  › ")]
    assert bot_lines[0] == f"bot  › {story['heard']}"
    assert turns[1]["heard"].startswith("It is")


def test_file_mode_with_an_unreachable_orchestrator_exits_8(question_wav: Path) -> None:
    out = _talk("--input", str(question_wav), "--url", f"127.0.0.1:{free_port()}", jack="unused")
    assert out.returncode == 8, out.stdout + out.stderr
    assert "unreachable" in out.stderr and "duplexctl up" in out.stderr


def test_wav_conversion_any_width_rate_and_channels(tmp_path: Path) -> None:
    """24-bit stereo 44.1 kHz in → 16 kHz mono; stereo out puts the user left, the bot right."""
    t = np.arange(44_100) / 44_100
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    as24 = (np.stack([tone, tone], axis=1) * 8_388_607).astype("<i4").reshape(-1)
    raw = np.frombuffer(as24.tobytes(), np.uint8).reshape(-1, 4)[:, :3].tobytes()
    src = tmp_path / "in24.wav"
    with wave.open(str(src), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(3)
        wav.setframerate(44_100)
        wav.writeframes(raw)
    samples, rate = read_wav(src)
    assert rate == 44_100 and abs(float(np.abs(samples).max()) - 0.5) < 0.01
    link = to_link_rate(samples, rate)
    assert len(link) == 16_000 and abs(int(np.abs(link).max()) - 16_384) < 400
    dst = tmp_path / "stereo.wav"
    write_wav(dst, speaker=np.full(4, 7, np.int16), mic=np.full(2, -3, np.int16))
    with wave.open(str(dst)) as wav:
        frames = np.frombuffer(wav.readframes(4), "<i2").reshape(-1, 2)
    assert frames[:, 0].tolist() == [-3, -3, 0, 0] and frames[:, 1].tolist() == [7, 7, 7, 7]


def test_file_mode_keeps_what_was_received_when_the_orchestrator_dies(tmp_path: Path) -> None:
    """The orchestrator is killed while the story plays: `talk` writes the WAV and the events
    it got, says what happened and exits 8, with no traceback."""
    import signal
    import threading

    from duplexd.devkit.procs import daemon

    story = _wav(tmp_path / "story.wav", concat(silence(400), speech("tell me a story")))
    wav_out, events = tmp_path / "out.wav", tmp_path / "ev.jsonl"
    with (
        daemon("worker", tmp_path / "w") as worker,
        daemon("orchestrator", tmp_path / "o", ["--worker", f"w={worker.addr}"]) as orch,
    ):
        killer = threading.Timer(7.0, lambda: os.kill(orch.proc.pid, signal.SIGKILL))
        killer.start()
        try:
            out = _talk(
                "--input", str(story), "--output", str(wav_out), "--events", str(events),
                "--max-wait", "40", "--url", orch.addr, jack="unused",
            )  # fmt: skip
        finally:
            killer.cancel()
    assert out.returncode == 8, out.stdout + out.stderr
    said = " ".join(out.stderr.split())
    assert "the orchestrator went away mid-conversation" in said, said
    assert "Traceback" not in out.stderr
    assert str(wav_out) in said and str(events) in said
    with wave.open(str(wav_out)) as wav:
        speaker = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
    assert speaker.std() > 300  # the part of the story that arrived
    kinds = {e["type"] for e in _events(events)}
    assert {"ready", "transcript", "latency"} <= kinds
