"""`duplexctl dash`: panels as snapshots of fixed data, and real actions on a real worker.

Snapshot tests draw hand-made `Snapshot`s with the clock frozen and the cursor blink off, so
the SVGs only change when the drawing does (`pytest tests/tui --snapshot-update` accepts a
new drawing). Pilot tests start a real `duplexd worker` and drive the app with keys and the
command palette, the way an operator would.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, RichLog
from textual.widgets.data_table import CellDoesNotExist
from typer.testing import CliRunner

from duplexctl.cli.dash import dash
from duplexctl.supervise.logs import marker_line
from duplexctl.supervise.state import DaemonRecord, FleetState, StateStore, process_created
from duplexctl.tui.app import DaemonControl, DashApp
from duplexctl.tui.data import (
    DaemonView,
    LogLine,
    ModelView,
    OrchestratorView,
    Poller,
    SessionView,
    Snapshot,
    Sources,
    TurnBar,
    WorkerView,
)
from duplexctl.tui.screens.confirm import ConfirmScreen
from duplexctl.tui.widgets.body import Body
from duplexctl.tui.widgets.daemons import DaemonsPanel
from duplexctl.tui.widgets.latency import LatencyPanel
from duplexctl.tui.widgets.logs import LogFilter, LogPane
from duplexctl.tui.widgets.memory import MemoryPanel
from duplexctl.tui.widgets.models import ModelsPanel
from duplexctl.tui.widgets.panel import Panel
from duplexctl.tui.widgets.sessions import SessionsPanel
from duplexd.devkit.procs import DaemonProc, daemon

NOW = 1_800_000_000.0  # every snapshot test's frozen clock
MiB, GiB = 1 << 20, 1 << 30
Snap = Callable[..., bool]

# -- fixed data ----------------------------------------------------------------------------------


def _log(event: str, level: str = "info", second: int = 0, **fields: Any) -> str:
    # A naive ISO time renders the same in every time zone.
    return json.dumps(
        {"event": event, "level": level, "timestamp": f"2027-01-15T08:00:{second:02d}", **fields}
    )


def _models() -> tuple[ModelView, ...]:
    return (
        ModelView("piper-en-us-joe", "piper", "resident", refcount=1, is_default=True,
                  last_used_unix=NOW - 3, memory_bytes=112 * MiB, load_ms=840.0),
        ModelView("espeak-en", "espeak", "resident", ttl_remaining_ms=95_000,
                  last_used_unix=NOW - 65, memory_bytes=8 * MiB, load_ms=41.5),
        ModelView("piper-en-gb-alba", "piper", "loading", memory_bytes=64 * MiB),
        ModelView("kokoro-82m", "kokoro", "unavailable", unavailable_reason="needs duplex[ml]"),
        ModelView("espeak-de", "espeak", "not_loaded", memory_bytes=8 * MiB),
    )  # fmt: skip


def fixed_snapshot() -> Snapshot:
    cpu = WorkerView(
        "127.0.0.1:7001", "tts-worker@0", mem_total_bytes=16 * GiB, mem_used_bytes=9 * GiB,
        rss_bytes=300 * MiB, started_unix=NOW - 3725, models=_models(), queue_depth=3,
        active_sessions=1, rtf=0.12,
        fal_p50_ms=tuple(40.0 + (i * 7) % 25 for i in range(40)),
        fal_p95_ms=tuple(80.0 + (i * 13) % 60 for i in range(40)),
        jitter_p95_ms=tuple(2.0 + (i * 3) % 7 for i in range(40)),
    )  # fmt: skip
    joe = ModelView("piper-en-us-joe", "piper", "resident", is_default=True, pinned=True,
                    memory_bytes=3 * GiB, load_ms=2100.0)  # fmt: skip
    gpu = WorkerView(
        "10.0.0.2:7001", "tts-worker@1", gpu=True, device="cuda:0", mem_total_bytes=24 * GiB,
        mem_used_bytes=6 * GiB, rss_bytes=2 * GiB, started_unix=NOW - 120, models=(joe,),
        fal_p50_ms=(30.0, 31.0, 29.0), fal_p95_ms=(60.0, 70.0, 65.0), jitter_p95_ms=(1.0, 1.5, 1.2),
    )  # fmt: skip
    crash = _log("worker crashed", "error", error="espeak-ng not found")
    daemons = (
        DaemonView("tts-worker@0", "worker", "127.0.0.1:7001", "up", NOW - 3725, 0, 1.8),
        DaemonView("tts-worker@1", "worker", "10.0.0.2:7001", "up", NOW - 120, 2, 4.2),
        DaemonView("tts-worker@2", "worker", "127.0.0.1:7003", "down", None, 5, None, crash),
        DaemonView("orchestrator", "orchestrator", "127.0.0.1:8080", "up", NOW - 3700, 0, 0.9),
    )
    sessions = (
        SessionView("a1b2c3d4e5f6a7b8", "speaking", 4, "piper-en-us-joe", "tts-worker@0",
                    "what is the weather like tomorrow in"),
        SessionView("ffee00112233", "barged_in", 2, "espeak-en", "tts-worker@1", "stop, tell me"),
        SessionView("0099887766", "listening"),
    )  # fmt: skip
    turns = (
        TurnBar(NOW - 30, 1, (180.0, 120.0, 250.0, 90.0)),
        TurnBar(NOW - 10, 2, (160.0, 80.0, 400.0, 70.0)),
        TurnBar(NOW - 1, 1, (200.0, 60.0, 150.0, 45.0)),
    )
    orch = OrchestratorView("127.0.0.1:8080", sessions=sessions, bargein_total=7,
                            bargein_p95_ms=18.5, turn_p50_ms=640.0, turns=turns)  # fmt: skip
    logs = [
        ("tts-worker@0", _log("worker ready", second=1, addr="127.0.0.1:7001")),
        ("orchestrator", _log("session opened", second=2, session_id="a1b2")),
        ("tts-worker@0", _log("slow synthesis", "warning", 3, rtf=1.4)),
        ("tts-worker@2", crash),
        ("supervisor", "a line that is not JSON"),
    ]
    lines = tuple(LogLine(i + 1, d, r) for i, (d, r) in enumerate(logs))
    return Snapshot(
        NOW, daemons, (cpu, gpu), orch, lines, supervisor_pid=4242, supervisor_alive=True
    )


class PanelApp(App[None]):
    """One panel alone, showing the fixed snapshot."""

    def __init__(self, panel: Panel, snapshot: Snapshot | None = None) -> None:
        super().__init__()
        self.panel = panel
        self.snapshot = snapshot or fixed_snapshot()

    def compose(self) -> ComposeResult:
        yield self.panel

    def on_mount(self) -> None:
        self.panel.show(self.snapshot, NOW)


async def freeze(pilot: Pilot[Any]) -> None:
    """No blinking cursor: a screenshot taken mid-blink would differ from the stored one."""
    for field in pilot.app.query(Input):
        field.cursor_blink = False
    await pilot.pause()


# -- snapshots ------------------------------------------------------------------------------------


def test_dashboard_snapshot(snap_compare: Snap) -> None:
    app = DashApp(snapshot=fixed_snapshot(), clock=lambda: NOW)
    assert snap_compare(app, terminal_size=(140, 48), run_before=freeze)


@pytest.mark.parametrize(
    ("panel", "size"),
    [
        (DaemonsPanel, (90, 10)),
        (MemoryPanel, (70, 12)),
        (ModelsPanel, (120, 12)),
        (LatencyPanel, (80, 18)),
        (SessionsPanel, (100, 8)),
        (LogPane, (100, 12)),
    ],
)
def test_panel_snapshot(snap_compare: Snap, panel: type[Panel], size: tuple[int, int]) -> None:
    assert snap_compare(PanelApp(panel()), terminal_size=size, run_before=freeze)


def test_models_panel_marks_actions_in_flight(snap_compare: Snap) -> None:
    panel = ModelsPanel()

    async def loading(pilot: Pilot[Any]) -> None:
        panel.set_pending({("127.0.0.1:7001", "espeak-de"): "load"})
        await freeze(pilot)

    assert snap_compare(PanelApp(panel), terminal_size=(120, 12), run_before=loading)


def test_nothing_running_snapshot(snap_compare: Snap) -> None:
    app = DashApp(snapshot=Snapshot(NOW), clock=lambda: NOW)
    assert snap_compare(app, terminal_size=(100, 30), run_before=freeze)


def test_unload_confirmation_snapshot(snap_compare: Snap) -> None:
    app = DashApp(snapshot=fixed_snapshot(), clock=lambda: NOW)

    async def ask(pilot: Pilot[Any]) -> None:
        app.push_screen(ConfirmScreen("Unload espeak-en from tts-worker@0?"))
        await freeze(pilot)

    assert snap_compare(app, terminal_size=(100, 30), run_before=ask)


# -- pure helpers ---------------------------------------------------------------------------------


def test_log_filter_words_and_level() -> None:
    from duplexctl.tui.widgets.format import format_log

    warn = format_log("w0", _log("slow synthesis", "warning", rtf=1.4))
    info = format_log("w0", _log("worker ready"))
    assert LogFilter.parse("level:warn").accepts(warn)
    assert not LogFilter.parse("level:warn").accepts(info)
    assert LogFilter.parse("SLOW rtf").accepts(warn)
    assert not LogFilter.parse("ready level:error").accepts(info)


def test_the_log_pane_starts_at_the_current_run(tmp_path: Path) -> None:
    """Lines of an earlier `duplexctl up` are not this run's: the first read starts at the
    last start marker (a restart's marker and the crash before it stay); then it tails."""
    from duplexctl.tui.history import LogTail

    path = tmp_path / "tts-worker@0.log"
    path.write_bytes(
        (_log("old run: ready") + "\n" + _log("old run: crash", "error") + "\n").encode()
        + marker_line("tts-worker@0", 0)
        + (_log("new run: ready") + "\n" + _log("new run: crash", "error") + "\n").encode()
        + marker_line("tts-worker@0", 1)
        + (_log("after restart") + "\n").encode()
    )
    tail = LogTail()
    events = [json.loads(line.raw)["event"] for line in tail.read({"w0": path})]
    assert events == [
        "supervisor: starting", "new run: ready", "new run: crash", "supervisor: restart #1",
        "after restart",
    ]  # fmt: skip
    with path.open("a") as fh:
        fh.write(_log("later") + "\n")
    assert json.loads(tail.read({"w0": path})[-1].raw)["event"] == "later"
    without = tmp_path / "plain.log"  # no marker (started by hand): its tail as it is
    without.write_text(_log("a") + "\n" + _log("b") + "\n")
    assert [line.raw for line in LogTail().read({"p": without})] == [_log("a"), _log("b")]


@pytest.mark.asyncio
async def test_turn_bars_are_means_between_polls(tmp_path: Path) -> None:
    from duplexctl.tui.history import TurnTracker, prometheus_samples

    def metrics(count: int, total: float) -> str:
        lines = ["# TYPE duplex_orch_turn_ms histogram"]
        for stage in ("end_of_speech", "asr", "llm_first_text", "tts_first_audio"):
            lines += [
                f'duplex_orch_turn_ms_sum{{stage="{stage}"}} {total}',
                f'duplex_orch_turn_ms_count{{stage="{stage}"}} {count}',
            ]
        return "\n".join(lines) + "\n"

    tracker = TurnTracker()
    assert tracker.update(prometheus_samples(metrics(0, 0)), 1.0) == ()
    (first,) = tracker.update(prometheus_samples(metrics(2, 300)), 2.0)
    assert first.turns == 2 and first.stages_ms == (150.0,) * 4
    assert tracker.update(prometheus_samples(metrics(2, 300)), 3.0) == (first,)  # no new turn
    bars = tracker.update(prometheus_samples(metrics(3, 400)), 4.0)
    assert bars[-1].stages_ms == (100.0,) * 4 and bars[-1].turns == 1


def test_workers_sharing_a_name_are_told_apart_by_address() -> None:
    from duplexctl.tui.views import unique_names

    views = [WorkerView("h1:7001", "tts-worker@0"), WorkerView("h2:7001", "tts-worker@0")]
    views.append(WorkerView("h3:7001", "gpu-box"))
    names = [v.name for v in unique_names(views)]
    assert names == ["tts-worker@0 (h1:7001)", "tts-worker@0 (h2:7001)", "gpu-box"]


def test_help_documents_the_keys() -> None:
    cli = typer.Typer(rich_markup_mode="rich")
    cli.command(name="dash")(dash)
    cli.command(name="other")(lambda: None)  # a group, so `dash` is a subcommand as in duplexctl
    result = CliRunner().invoke(cli, ["dash", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    for text in ("--worker", "--orchestrator", "Keys", "Ctrl+P", "unload it (asks first)",
                 "duplexctl up --detach", "level:warning"):  # fmt: skip
        assert text in result.output


# -- real daemons ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    """One real `duplexd worker` (Piper default, eSpeak in the catalog) for this module."""
    root = tmp_path_factory.mktemp("worker")
    with daemon("worker", root, env={"DUPLEX_MODELS_DIR": str(root / "models")}) as proc:
        yield proc


def live_app(tmp_path: Path, workers: tuple[str, ...] = (), **kw: Any) -> DashApp:
    # An empty state dir of our own: never the operator's real daemons.
    poller = Poller(Sources(workers=workers, state_dir=tmp_path / "state"))
    return DashApp(poller=poller, interval_s=0.2, **kw)


async def until(pilot: Pilot[Any], check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out; notices: {notices(pilot.app)}"
        await pilot.pause(0.05)


def state_of(app: DashApp, addr: str, model_id: str) -> str:
    table = app.query_one("#models DataTable", DataTable)
    try:
        return str(table.get_cell(f"{addr} {model_id}", "STATE"))
    except CellDoesNotExist:  # not polled yet
        return ""


def notices(app: App[Any]) -> list[str]:
    return [f"{n.title}: {n.message}" for n in app._notifications]


async def palette(pilot: Pilot[Any], command: str) -> None:
    """Run `command` from the command palette as a user would: Ctrl+P, type it, Enter."""
    from textual.command import Command, CommandList

    await pilot.press("ctrl+p")
    await pilot.press(*command)
    # The palette searches in the background and shows hits in batches, best first.
    await pilot.pause(0.6)
    hits = pilot.app.screen.query_one(CommandList)
    await until(pilot, lambda: hits.option_count > 0 and hits.highlighted == 0)
    best = hits.get_option_at_index(0)
    assert isinstance(best, Command) and best.hit.text == command, best.prompt
    await pilot.press("enter")


@pytest.mark.integration
@pytest.mark.asyncio
async def test_state_says_what_a_user_can_do_as_models_list_does(
    worker: DaemonProc, tmp_path: Path
) -> None:
    """The worker's words, the same as `duplexctl models list` and `/models`: not pulled,
    needs parler env (its own environment), unavailable with the first clause of why."""
    app = live_app(tmp_path, (worker.addr,))
    async with app.run_test(size=(140, 48)) as pilot:
        await until(pilot, lambda: state_of(app, worker.addr, "xtts-v2-en") != "")
        assert state_of(app, worker.addr, "xtts-v2-en") == "not pulled"
        assert state_of(app, worker.addr, "sesame-unsloth-lora01") == "not pulled"
        assert state_of(app, worker.addr, "parler-tts-mini-v1") == "needs parler env"
        melo = state_of(app, worker.addr, "melotts-en")
        assert melo.startswith("unavailable: MeloTTS"), melo
        assert state_of(app, worker.addr, "espeak-en") == "not loaded"


@pytest.mark.integration
@pytest.mark.asyncio
async def test_load_from_palette_then_unload(worker: DaemonProc, tmp_path: Path) -> None:
    app = live_app(tmp_path, (worker.addr,))
    async with app.run_test(size=(140, 48)) as pilot:
        await until(pilot, lambda: state_of(app, worker.addr, "espeak-en") == "not loaded")
        await palette(pilot, "Load model espeak-en")
        await until(pilot, lambda: state_of(app, worker.addr, "espeak-en") in ("resident", "idle"))
        assert any("espeak-en" in n and "loaded in" in n for n in notices(app)), notices(app)
        snap = app.dashboard.snapshot
        assert snap is not None
        assert snap.workers[0].model("espeak-en").resident  # type: ignore[union-attr]

        table = app.query_one("#models DataTable", DataTable)
        assert app.focused is table  # the keys l/u/p/P act on the row under its cursor
        table.move_cursor(row=table.get_row_index(f"{worker.addr} espeak-en"))
        await pilot.press("u")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: state_of(app, worker.addr, "espeak-en") == "not loaded")
        assert any("espeak-en unloaded" in n for n in notices(app)), notices(app)


@pytest.mark.integration
@pytest.mark.asyncio
async def test_refused_unload_of_the_default_model_says_why(
    worker: DaemonProc, tmp_path: Path
) -> None:
    app = live_app(tmp_path, (worker.addr,))
    async with app.run_test(size=(140, 48)) as pilot:
        await until(pilot, lambda: state_of(app, worker.addr, "piper-en-us-joe") == "resident")
        await palette(pilot, "Unload model piper-en-us-joe")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: any("refused" in n for n in notices(app)))
        (refusal,) = [n for n in notices(app) if "refused" in n]
        assert "default" in refusal and "force" in refusal
        assert state_of(app, worker.addr, "piper-en-us-joe") == "resident"


@pytest.mark.integration
@pytest.mark.asyncio
async def test_daemons_from_the_state_file_dead_one_in_red_with_logs(
    worker: DaemonProc, tmp_path: Path
) -> None:
    store = StateStore(tmp_path / "state")
    store.ensure()
    dead_log = store.log_file("tts-worker@1")
    earlier_up = _log("an earlier up's crash", "error") + "\n"  # before this run's start marker
    dead_log.write_bytes(
        (earlier_up + _log("worker ready") + "\n").encode()
        + marker_line("tts-worker@1", 0)
        + (_log("worker ready") + "\n" + _log("boom: out of memory", "error") + "\n").encode()
    )
    me = os.getpid()  # any live process stands in for the supervisor
    store.write(
        FleetState(
            supervisor_pid=me,
            supervisor_created=process_created(me),
            phase="ready",
            daemons=[
                DaemonRecord("tts-worker@0", "worker", str(worker.log_path), worker.addr,
                             worker.proc.pid, process_created(worker.proc.pid),
                             started_at=time.time() - 5, state="running"),
                DaemonRecord("tts-worker@1", "worker", str(dead_log), "127.0.0.1:9",
                             state="failed", restarts=3),
            ],
        )
    )  # fmt: skip
    app = DashApp(poller=Poller(Sources(state_dir=store.root)), interval_s=0.2)
    async with app.run_test(size=(140, 48)) as pilot:
        daemons = app.query_one("#daemons DataTable", DataTable)
        await until(pilot, lambda: daemons.row_count == 2)
        live, dead = f"worker {worker.addr}", "worker 127.0.0.1:9"  # rows are keyed by address
        assert str(daemons.get_cell(live, "DAEMON")) == "tts-worker@0"
        assert str(daemons.get_cell(live, "HEALTH")) == "up"
        assert str(daemons.get_cell(dead, "HEALTH")) == "down"
        assert daemons.get_cell(dead, "HEALTH").style == "bold red"
        notes = str(app.query_one("#daemons #notes", Body).content)
        assert "tts-worker@1 down" in notes and "boom: out of memory" in notes

        log = app.query_one(RichLog)
        await until(pilot, lambda: any("worker ready" in line.text for line in log.lines))
        assert not any("earlier up" in line.text for line in log.lines)  # the current run only
        await pilot.press("slash", *"level:error")
        await until(pilot, lambda: len(log.lines) == 1)
        assert "boom: out of memory" in log.lines[0].text


@pytest.mark.asyncio
async def test_nothing_running_offers_to_start(tmp_path: Path) -> None:
    """The start button runs what `duplexctl up --detach` runs, in-process; here its port
    check refuses (the worker's port is taken) and the dashboard says so."""
    import socket

    from duplexctl.supervise.spec import UpOptions
    from duplexctl.supervise.state import StateStore

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        options = UpOptions(base_port=port, metrics_base_port=0, orchestrator_port=0)
        control = DaemonControl(state_dir=tmp_path / "state", options=options)
        app = live_app(tmp_path, control=control)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.query_one("#nothing").display)
            await pilot.click("#start")
            await until(pilot, lambda: any("start failed" in n for n in notices(app)), 10)
        message = next(n for n in notices(app) if "start failed" in n)
        assert f"port {port}" in message and "already in use" in message
    assert StateStore(tmp_path / "state").read() is None  # nothing was started


@pytest.fixture(scope="module")
def orchestrator(
    worker: DaemonProc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonProc]:
    tmp = tmp_path_factory.mktemp("orchestrator")
    with daemon("orchestrator", tmp, ["--worker", f"w0={worker.addr}"]) as proc:
        yield proc


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.asyncio
async def test_orchestrator_sessions_and_turn_stages(
    worker: DaemonProc, orchestrator: DaemonProc, tmp_path: Path
) -> None:
    from duplexctl.client.ws import VoiceClient

    poller = Poller(
        Sources(workers=(worker.addr,), orchestrator=orchestrator.addr, state_dir=tmp_path)
    )
    app = DashApp(poller=poller, interval_s=0.2)
    async with app.run_test(size=(140, 48)) as pilot, VoiceClient(orchestrator.addr, {}) as voice:
        await voice.send_json({"type": "text", "text": "Hello there, how are you?"})
        async with asyncio.timeout(30):
            async for item in voice.messages():
                if item.event is not None and item.event["type"] == "turn":
                    break

        def orch() -> OrchestratorView | None:
            snap = app.dashboard.snapshot
            return snap.orchestrator if snap is not None else None

        await until(pilot, lambda: bool((o := orch()) and o.turns and o.sessions))
        view = orch()
        assert view is not None
        (turn,) = view.turns
        assert turn.turns == 1 and turn.stages_ms[2] > 0  # the LLM stage (built-in responder)
        daemons = app.query_one("#daemons DataTable", DataTable)
        assert str(daemons.get_cell(f"orchestrator {orchestrator.addr}", "HEALTH")) == "up"
        assert "1 live" in str(app.query_one(SessionsPanel).border_subtitle)
