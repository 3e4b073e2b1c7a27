"""`duplexctl models …` and `duplexctl say` against a real worker over real gRPC."""

from __future__ import annotations

import re
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner, Result

from duplexctl.cli import models, say
from duplexctl.client.fleet import DEFAULT_WORKER, WorkerTarget, resolve_workers
from duplexctl.supervise.state import DaemonRecord, FleetState, StateStore
from duplexd.devkit.procs import DaemonProc, daemon
from duplexd.errors import InvalidArgument

app = typer.Typer()
app.add_typer(models.app, name="models")
app.command()(say.say)
runner = CliRunner()
Invoke = Callable[..., Result]


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    with daemon("worker", tmp_path_factory.mktemp("worker"), ["--ttl-ms", "60000"]) as proc:
        yield proc


@pytest.fixture
def cli(worker: DaemonProc, tmp_path: Path) -> Invoke:
    """Invoke the app against the worker; an empty state dir so no real fleet interferes."""
    env = {"COLUMNS": "200", "DUPLEX_STATE_DIR": str(tmp_path / "state")}

    def invoke(*args: str, to_worker: bool = True) -> Result:
        extra = ["--worker", worker.addr] if to_worker else []
        return runner.invoke(app, [*args, *extra], env=env)

    return invoke


def _row(output: str, model: str) -> list[str]:
    line = next(ln for ln in output.splitlines() if ln.split() and ln.split()[0] == model)
    return re.split(r"\s{2,}", line.strip())


def test_list_shows_the_default_resident_and_the_rest_not_loaded(cli: Invoke) -> None:
    result = cli("models", "list")
    assert result.exit_code == 0, result.output
    assert "MODEL" in result.output and "UNTIL" in result.output
    joe = _row(result.output, "piper-en-us-joe")
    assert joe[0] == "piper-en-us-joe *"  # the default mark
    assert joe[1:4] == ["piper", "tts-worker@0", "resident"]
    assert joe[-1] == "forever"
    assert re.fullmatch(r"\d+(\.\d)? MiB", joe[-2])
    espeak = _row(result.output, "espeak-en")
    assert espeak[3] == "not loaded" and espeak[-1] == "—"
    assert "default model" in result.output


def test_load_reports_the_time_and_list_shows_it_resident_with_a_ttl(cli: Invoke) -> None:
    result = cli("models", "load", "espeak-en")
    assert result.exit_code == 0, result.output
    assert re.search(r"(loaded espeak-en on .* in [\d.]+ m?s|already resident)", result.output)
    espeak = _row(cli("models", "list").output, "espeak-en")
    assert espeak[3] == "resident"
    assert re.fullmatch(r"(\d+m\d\ds|\d+s)", espeak[-1]), espeak  # the idle clock counting down


def test_pin_then_unpin(cli: Invoke) -> None:
    result = cli("models", "pin", "espeak-en")
    assert result.exit_code == 0, result.output
    assert "pinned espeak-en" in result.output
    espeak = _row(cli("models", "list").output, "espeak-en")
    assert espeak[5] == "yes" and espeak[-1] == "forever"
    result = cli("models", "unpin", "espeak-en")
    assert result.exit_code == 0, result.output
    espeak = _row(cli("models", "list").output, "espeak-en")
    assert espeak[5] == "no" and espeak[-1] != "forever"


def test_unloading_the_default_model_is_refused_with_exit_4(cli: Invoke) -> None:
    result = cli("models", "unload", "piper-en-us-joe")
    assert result.exit_code == 4, result.output
    assert "default model" in result.stderr


def test_loading_an_unknown_model_exits_3(cli: Invoke) -> None:
    result = cli("models", "load", "nope")
    assert result.exit_code == 3, result.output
    assert "unknown model 'nope'" in result.stderr


def test_unload_then_preload_several(cli: Invoke) -> None:
    result = cli("models", "unload", "espeak-en")
    assert result.exit_code == 0, result.output
    assert "unloaded espeak-en" in result.output
    result = cli("models", "preload", "espeak-en,piper-en-us-joe")
    assert result.exit_code == 0, result.output
    assert "loaded espeak-en" in result.output
    assert "piper-en-us-joe is already resident" in result.output
    result = cli("models", "preload", "nope,espeak-en")  # one bad id does not stop the rest
    assert result.exit_code == 3
    assert "espeak-en is already resident" in result.output


def test_say_writes_a_48k_mono_wav_and_reports_first_audio(cli: Invoke, tmp_path: Path) -> None:
    out = tmp_path / "hello.wav"
    result = cli("say", "Hello there, this is a test.", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert re.search(r"first audio \d+ ms · [\d.]+ s of audio · piper-en-us-joe", result.output)
    with wave.open(str(out), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (48000, 1, 2)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    assert len(pcm) > 48000 // 2  # more than half a second
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 500  # speech, not silence


def test_say_to_a_file_is_not_paced_to_real_time(cli: Invoke, tmp_path: Path) -> None:
    """A file needs no real-time pacing: a paced worker could not deliver the audio in less
    than its own length, this one must (Piper runs at a fraction of real time)."""
    import time

    out = tmp_path / "long.wav"
    text = (
        "Once upon a time, in a small town by the sea, there lived a lighthouse keeper "
        "named Ada, who counted the ships every night."
    )
    started = time.perf_counter()
    result = cli("say", text, "--out", str(out))
    took = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    with wave.open(str(out), "rb") as wav:
        audio_s = wav.getnframes() / wav.getframerate()
    print(f"{audio_s:.2f} s of audio written in {took:.2f} s")
    assert audio_s > 4.0
    assert took < 0.8 * audio_s, f"{audio_s:.2f} s of audio took {took:.2f} s: paced"


def test_say_with_another_model(cli: Invoke, tmp_path: Path) -> None:
    out = tmp_path / "espeak.wav"
    result = cli("say", "Testing espeak.", "--model", "espeak-en", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "espeak-en" in result.output and out.stat().st_size > 10_000


def test_say_to_an_unreachable_worker_exits_8(cli: Invoke, tmp_path: Path) -> None:
    result = cli(
        "say", "hi", "--out", str(tmp_path / "x.wav"), "--worker", "127.0.0.1:1", to_worker=False
    )
    assert result.exit_code == 8, result.output
    assert "cannot reach worker 127.0.0.1:1" in result.stderr
    assert "duplexctl up" in result.stderr


def test_say_without_an_output_device_suggests_out(cli: Invoke) -> None:
    sd = pytest.importorskip("sounddevice")
    try:
        sd.query_devices(kind="output")
        pytest.skip("this machine has an audio output device")
    except (sd.PortAudioError, ValueError):
        pass
    result = cli("say", "hi")
    assert result.exit_code == 9, result.output
    assert "no audio output device" in result.stderr
    assert "--out" in result.stderr


def test_an_unknown_worker_name_lists_the_known_ones(cli: Invoke) -> None:
    result = cli("models", "list", "--worker", "tts-worker@9", to_worker=False)
    assert result.exit_code == 2, result.output
    assert "unknown worker 'tts-worker@9'" in result.stderr


# -- which workers a command talks to -----------------------------------------------------------


def _store_with_workers(root: Path) -> StateStore:
    store = StateStore(root)
    records = [
        DaemonRecord(name=f"tts-worker@{i}", kind="worker", log="", addr=f"127.0.0.1:{7101 + i}")
        for i in range(2)
    ]
    orch = DaemonRecord(name="orchestrator", kind="orchestrator", log="", addr="127.0.0.1:8080")
    store.write(FleetState(supervisor_pid=1, daemons=[*records, orch]))
    return store


def test_fleet_resolution(tmp_path: Path) -> None:
    empty = StateStore(tmp_path / "empty")
    assert resolve_workers(None, empty) == [WorkerTarget(DEFAULT_WORKER, DEFAULT_WORKER)]
    store = _store_with_workers(tmp_path / "fleet")
    assert [t.name for t in resolve_workers(None, store)] == ["tts-worker@0", "tts-worker@1"]
    assert resolve_workers("tts-worker@1", store) == [
        WorkerTarget("tts-worker@1", "127.0.0.1:7102")
    ]
    # an address is used as given, named when the state knows it
    assert resolve_workers("127.0.0.1:7101", store)[0].name == "tts-worker@0"
    assert resolve_workers("10.0.0.7:7001", store)[0].addr == "10.0.0.7:7001"
    with pytest.raises(InvalidArgument, match="tts-worker@0, tts-worker@1"):
        resolve_workers("orchestrator", store)
