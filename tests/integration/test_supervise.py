"""`duplexctl up/status/logs/down` with real worker processes: readiness, restart, no orphans."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import typer
from typer.testing import CliRunner, Result

from duplexctl.cli import daemons
from duplexctl.supervise.spec import METRICS_OFFSET
from duplexctl.supervise.state import DaemonRecord, FleetState, StateStore

pytestmark = pytest.mark.integration

app = typer.Typer()
for command in (daemons.up, daemons.down, daemons.status, daemons.logs):
    app.command()(command)
runner = CliRunner()

# The same commands as a program, for the foreground supervisor (it must own its process).
_PROGRAM = (
    "import typer; from duplexctl.cli import daemons; app = typer.Typer()\n"
    "for c in (daemons.up, daemons.down, daemons.status, daemons.logs): app.command()(c)\n"
    "app()"
)

Invoke = Callable[..., Result]


def _free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(n: int) -> int:
    """A base port with BASE..BASE+n-1 and their metrics ports (BASE+2100+i) all free."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            base = int(sock.getsockname()[1])
        ports = [base + i for i in range(n)] + [base + METRICS_OFFSET + i for i in range(n)]
        if max(ports) < 65536 and all(_free(p) for p in ports):
            return base
    raise RuntimeError("no free port range")


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def row(output: str, name: str) -> list[str]:
    line = next(ln for ln in output.splitlines() if ln.split() and ln.split()[0] == name)
    return line.split()


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "state"
    yield root
    # Whatever a failing test left running goes now.
    runner.invoke(app, ["down", "--grace", "1"], env={"DUPLEX_STATE_DIR": str(root)})


@pytest.fixture
def cli(state_dir: Path) -> Invoke:
    env = {"DUPLEX_STATE_DIR": str(state_dir), "COLUMNS": "200"}

    def invoke(*args: str) -> Result:
        return runner.invoke(app, list(args), env=env)

    return invoke


def test_detached_up_status_restart_logs_down(cli: Invoke, state_dir: Path) -> None:
    base = free_base_port(2)
    result = cli("up", "--no-orchestrator", "--workers", "2", "--detach", "--base-port", str(base))
    assert result.exit_code == 0, result.output
    assert "supervisor running in the background" in result.output

    status = cli("status")
    assert status.exit_code == 0, status.output
    for i in range(2):
        cells = row(status.output, f"tts-worker@{i}")
        assert cells[2] == f"127.0.0.1:{base + i}" and cells[3] == "running", cells
        assert cells[-1] == "ms" and float(cells[-2]) >= 0  # a live ping
    state = StateStore(state_dir).read()
    assert state is not None
    first = {d.name: d.pid or 0 for d in state.daemons}

    as_json = json.loads(cli("status", "-o", "json").stdout)
    assert [d["name"] for d in as_json["daemons"]] == ["tts-worker@0", "tts-worker@1"]
    assert as_json["daemons"][0]["addr"] == f"127.0.0.1:{base}"
    assert as_json["daemons"][0]["state"] == "running" and as_json["supervisor"]["alive"]
    assert set(as_json["daemons"][0]) == {"name", "kind", "pid", "addr", "state", "uptime_s",
                                          "restarts", "ping_ms", "ping_error", "log"}  # fmt: skip

    # `logs -f` (a real process) reads on through the restart below
    follower = subprocess.Popen(
        [sys.executable, "-c", _PROGRAM, "logs", "tts-worker@0", "-f"],
        env={**os.environ, "DUPLEX_STATE_DIR": str(state_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    followed_lines: list[str] = []  # what the follower has printed so far, read as it prints
    out = follower.stdout
    assert out is not None
    reader = threading.Thread(target=lambda: followed_lines.extend(out), daemon=True)
    reader.start()

    # A crashed worker comes back, on the same port, with restarts=1.
    os.kill(first["tts-worker@0"], signal.SIGKILL)

    def restarted() -> bool:
        cells = row(cli("status").output, "tts-worker@0")
        return cells[3] == "running" and cells[5] == "1" and cells[-1] == "ms"

    wait_for(restarted, 10, "tts-worker@0 to be restarted")
    state = StateStore(state_dir).read()
    assert state is not None
    worker0 = state.find("tts-worker@0")
    assert worker0 is not None and worker0.pid != first["tts-worker@0"]
    assert worker0.last_exit == -signal.SIGKILL

    wait_for(lambda: "worker ready" in cli("logs", "tts-worker@0", "-n", "1").output, 30, "ready")
    # The follower polls the file; stop it once it has printed the second start too.
    wait_for(lambda: "".join(followed_lines).count("worker ready") >= 2, 10, "the follower")
    follower.send_signal(signal.SIGINT)
    follower.wait(timeout=10)
    reader.join(timeout=10)
    followed = "".join(followed_lines)
    restart = followed.index("──── supervisor: restart #1 (tts-worker@0) ────")
    assert "worker ready" in followed[:restart] and "worker ready" in followed[restart:], followed

    raw = cli("logs", "tts-worker@0", "--json")
    assert raw.exit_code == 0, raw.output
    events = [json.loads(ln)["event"] for ln in raw.output.splitlines()]  # every line is JSON
    assert "worker ready" in events and "supervisor: restart #1" in events
    logs = cli("logs", "tts-worker@0")
    assert logs.exit_code == 0, logs.output
    clock = r"\d\d:\d\d:\d\d\.\d{3}"
    for line in logs.output.splitlines():  # one time format, marker lines included
        assert re.match(rf"({clock} |── \d{{4}}-\d\d-\d\d)", line), line
    assert re.search(
        rf"{clock} INFO  tts\.app +worker ready  addr=127\.0\.0\.1:{base}", logs.output
    )
    listing = cli("logs")
    assert "tts-worker@1" in listing.output and "supervisor" in listing.output
    unknown = cli("logs", "nope")
    assert unknown.exit_code == 2 and "tts-worker@0" in unknown.stderr

    pids = [state.supervisor_pid, worker0.pid, *first.values()]
    down = cli("down")
    assert down.exit_code == 0, down.output
    assert f"stopped the supervisor (pid {state.supervisor_pid})" in down.output
    assert not [pid for pid in pids if alive(pid)]
    assert cli("down").output.strip() == "nothing running"
    nothing = cli("status")
    assert nothing.exit_code == 0 and "no daemons running" in nothing.output


def test_foreground_up_stops_every_child_on_ctrl_c(state_dir: Path) -> None:
    base = free_base_port(1)
    env = {**os.environ, "DUPLEX_STATE_DIR": str(state_dir), "COLUMNS": "200"}
    cmd = [sys.executable, "-c", _PROGRAM, "up", "--no-orchestrator", "--base-port", str(base)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    store = StateStore(state_dir)
    try:
        wait_for(lambda: (s := store.read()) is not None and s.phase == "ready", 60, "ready")
        state = store.read()
        assert state is not None and state.supervisor_pid == proc.pid
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert [d.pid for d in state.daemons] == children
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out.decode()
    assert b"tts-worker@0" in out and b"all daemons stopped" in out
    assert not [pid for pid in children if alive(pid)]
    assert store.read() is None  # a clean stop leaves no state behind


def test_a_busy_port_is_reported_before_anything_starts(cli: Invoke) -> None:
    base = free_base_port(1)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", base))
        sock.listen()
        result = cli("up", "--no-orchestrator", "--detach", "--base-port", str(base))
    assert result.exit_code == 1
    assert f"port {base} (tts-worker@0 gRPC) is already in use" in result.stderr
    assert "--base-port" in result.stderr


def test_status_with_a_dead_supervisor_exits_8_and_down_clears_it(
    cli: Invoke, state_dir: Path
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    record = DaemonRecord(name="tts-worker@0", kind="worker", log="", addr="127.0.0.1:1")
    StateStore(state_dir).write(FleetState(supervisor_pid=gone.pid, daemons=[record]))
    result = cli("status")
    assert result.exit_code == 8, result.output
    assert row(result.output, "tts-worker@0")[3] == "dead"
    assert "supervisor" in result.stderr and "duplexctl down" in result.stderr
    down = cli("down")
    assert down.exit_code == 0 and "stale state" in down.output
    assert "no daemons running" in cli("status").output


ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]|\r")


def test_a_new_users_session_reads_cleanly_at_80_columns(tmp_path: Path, state_dir: Path) -> None:
    """`up -d`, `status`, `models list | grep`, a load without weights, `logs`, `down`: on an
    80-column terminal no table line runs over and no id is cut; piped, plain columns."""
    from duplexctl.cli.main import app as duplexctl

    base, orch = free_base_port(1), free_base_port(1)
    env = {"DUPLEX_STATE_DIR": str(state_dir), "DUPLEX_MODELS_DIR": str(tmp_path / "models")}
    terminal = {**env, "TTY_COMPATIBLE": "1", "COLUMNS": "80"}

    def run(*args: str, tty: bool = True) -> tuple[int, list[str], str]:
        result = runner.invoke(duplexctl, list(args), env=terminal if tty else env)
        lines = ANSI.sub("", result.stdout).splitlines()
        return result.exit_code, lines, ANSI.sub("", result.stderr)

    def fits(lines: list[str]) -> None:
        assert all(len(line) <= 80 for line in lines), "\n".join(lines)

    up = ["up", "-d", "--base-port", str(base), "--orchestrator-port", str(orch)]
    code, lines, err = run(*up)
    assert code == 0, err
    fits(lines)
    code, lines, _ = run("status")
    assert code == 0
    fits(lines)
    for name in ("tts-worker@0", "orchestrator"):
        assert any(line.split()[:1] == [name] for line in lines), lines

    code, lines, _ = run("models", "list")
    assert code == 0
    fits(lines)
    for model_id in ("piper-en-us-joe", "sesame-unsloth-lora01", "parler-tts-mini-v1"):
        assert any(model_id in line.split() for line in lines), f"{model_id} cut: {lines}"
    xtts = next(line for line in lines if "xtts-v2-en" in line.split())
    assert "not pulled" in xtts
    code, piped, _ = run("models", "list", tty=False)  # `duplexctl models list | grep …`
    joe = [line for line in piped if line.startswith("piper-en-us-joe")]
    assert len(joe) == 1 and "resident" in joe[0] and "─" not in "".join(piped)

    def orchestrator_words() -> dict[str, str]:  # GET /models: the same words as the console
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{orch}/models", timeout=5) as answer:
            return {m["id"]: m.get("status", "") for m in json.load(answer)["models"]}

    wait_for(lambda: orchestrator_words().get("xtts-v2-en") == "not pulled", 30, "/models")
    words = orchestrator_words()
    assert (words["piper-en-us-joe"], words["parler-tts-mini-v1"]) == (
        "resident",
        "needs parler env",
    )

    code, lines, _ = run("models", "list", "-o", "json", tty=False)  # what a script reads
    records = {m["id"]: m for m in json.loads("\n".join(lines))["models"]}
    assert (records["xtts-v2-en"]["state"], records["xtts-v2-en"]["pulled"]) == ("not pulled", "no")
    assert records["piper-en-us-joe"]["resident"] and records["piper-en-us-joe"]["default"]
    assert records["piper-en-us-joe"]["memory_bytes"] > 0
    assert set(records["espeak-en"]) == {
        "id", "family", "worker", "worker_addr", "state", "resident", "default", "pinned", "refs",
        "memory_bytes", "estimated_memory_bytes", "ttl_remaining_s", "device", "base_model",
        "adapters", "pulled", "reason",
    }  # fmt: skip
    code, lines, _ = run("models", "pin", "espeak-en", "-o", "json", tty=False)
    (pinned,) = json.loads("\n".join(lines))["results"]
    assert code == 0 and pinned["ok"] and pinned["pinned"] and pinned["state"] == "resident"
    code, lines, _ = run("models", "unload", "espeak-en", "--force", "-o", "json", tty=False)
    assert code == 0 and json.loads("\n".join(lines))["results"][0]["model"] == "espeak-en"

    code, lines, err = run("models", "load", "xtts-v2-en", "-o", "json", tty=False)
    (refused,) = json.loads("\n".join(lines))["results"]
    assert code == 4 and refused["exit_code"] == 4 and not refused["ok"]
    code, lines, err = run("models", "load", "xtts-v2-en")
    assert code == 4, err
    assert "weights for 'xtts-v2-en' not found" in err
    assert "hint: run `duplexctl models pull xtts-v2-en`" in err.replace("\n", " ")
    assert "resident_cap" not in err

    code, lines, _ = run("logs")
    assert code == 0
    fits(lines)
    code, lines, _ = run("logs", "tts-worker@0")
    assert code == 0 and any("model load failed" in line for line in lines)
    assert not any(line.startswith("{") for line in lines)

    code, lines, err = run("down")
    assert code == 0, err
    fits(lines)
    assert "no daemons running" in "\n".join(run("status")[1])
