"""`duplexctl up / down / status / logs`: run the daemons on this machine and look after them.

`up` starts the workers (one per GPU with ``--gpus``) and the orchestrator, waits until each
reports ready, then supervises them: pings, restarts a crashed one with backoff, and stops all
of them gracefully on Ctrl-C. With ``--detach`` a background supervisor does the same, and
`status`, `logs` and `down` find it through the state directory
(``$DUPLEX_STATE_DIR``, else the platform's user state dir).

Fleet mode: ``up --redis URL`` has the workers announce themselves in that Redis registry and
the orchestrator discover workers there (local ones and any that join from other hosts with
`duplexctl worker join`); ``status`` lists every registered worker when a Redis URL is given
(``--redis`` or ``DUPLEX_REDIS_URL``).
"""

# supervise, grpc and httpx load inside the commands: `--help` stays fast

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from duplexctl.cli._common import console, err_console, fail, table
from duplexctl.format import duration
from duplexd.errors import DaemonUnavailable, DuplexError, InvalidArgument

if TYPE_CHECKING:
    from duplexctl.supervise.control import DaemonStatus
    from duplexctl.supervise.spec import DaemonSpec
    from duplexctl.supervise.state import FleetState, StateStore

__all__ = ["down", "logs", "status", "up"]

_STATE_STYLES = {
    "running": "green",
    "starting": "yellow",
    "restarting": "yellow",
    "stopping": "yellow",
}
_NOTHING = "no daemons running — start them with `duplexctl up`"

RedisOpt = Annotated[
    str | None,
    typer.Option(
        "--redis",
        help="Redis fleet registry, redis://[USER:PASS@]HOST:6379/0 or rediss:// "
        "(default: DUPLEX_REDIS_URL).",
    ),
]


def up(
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", "-n", min=1, help="TTS workers to run (default: one per GPU, else 1)."
        ),
    ] = None,
    gpus: Annotated[
        str | None,
        typer.Option(help="GPU indices, e.g. 0,1: one worker per GPU (CUDA_VISIBLE_DEVICES)."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Directory with worker.yaml and/or orchestrator.yaml."),
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Supervise in the background and return.")
    ] = False,
    orchestrator: Annotated[
        bool,
        typer.Option(
            "--orchestrator/--no-orchestrator",
            help="Also run the orchestrator; --no-orchestrator: workers only (joining a fleet).",
        ),
    ] = True,
    base_port: Annotated[
        int, typer.Option(help="gRPC port of worker 0; worker i gets BASE+i.")
    ] = 7001,
    metrics_base_port: Annotated[
        int | None,
        typer.Option(help="/metrics port of worker 0 (default: BASE+2100 = 9101); 0: off."),
    ] = None,
    orchestrator_port: Annotated[int, typer.Option(help="Orchestrator HTTP/WS port.")] = 8080,
    timeout: Annotated[
        float, typer.Option(help="Seconds each daemon may take to become ready.")
    ] = 120.0,
    redis: Annotated[
        str | None,
        typer.Option(
            "--redis",
            help="Redis registry URL: workers announce themselves, the orchestrator discovers "
            "them (also remote ones). Default: DUPLEX_REDIS_URL, else the static registry.",
        ),
    ] = None,
) -> None:
    """Start the orchestrator and TTS workers, wait until ready, and supervise them.

    [bold]Examples[/bold]

      duplexctl up                          one orchestrator + one worker, Ctrl-C stops both

      duplexctl up --detach                 the same in the background; see `duplexctl status`

      duplexctl up --gpus 0,1 -d            one worker per GPU

      duplexctl up --gpus 0,1 --redis redis://localhost:6379/0 -d
                                            the same, announced in a Redis fleet registry

      duplexctl up --no-orchestrator -n 2   two workers only (e.g. a GPU box joining a fleet)

      duplexctl up --base-port 7101         when 7001 (or 9101) is taken
    """
    from duplexctl.supervise.spec import UpOptions, check_ports, plan_daemons
    from duplexctl.supervise.state import StateStore

    store = StateStore()
    _refuse_if_running(store)
    opts = UpOptions(
        workers=workers,
        gpus=[g.strip() for g in gpus.split(",") if g.strip()] if gpus else (),
        config_dir=config,
        orchestrator=orchestrator,
        base_port=base_port,
        metrics_base_port=metrics_base_port,
        orchestrator_port=orchestrator_port,
        redis_url=redis,
    )
    try:
        specs = plan_daemons(opts, store)
        check_ports(specs, base_port)
    except DuplexError as exc:
        fail(exc)
    store.ensure()
    err_console.print(f"starting {_describe(specs)} …", style="dim")
    if detach:
        _up_detached(store, specs, timeout)
    else:
        _up_foreground(store, specs, timeout)


def _refuse_if_running(store: StateStore) -> None:
    from duplexctl.supervise.control import refuse_if_running

    try:
        stopped = refuse_if_running(store)
    except DuplexError as exc:
        fail(exc)
    if stopped:
        err_console.print(f"stopped leftovers of an earlier run: {', '.join(stopped)}")


def _up_detached(store: StateStore, specs: list[DaemonSpec], timeout: float) -> None:
    from duplexctl.supervise.control import spawn_detached, wait_until_ready

    proc = spawn_detached(store, specs, ready_timeout_s=timeout)
    try:
        with err_console.status("waiting until every daemon is ready …"):
            # Workers start together, the orchestrator after them: two ready waits at most.
            state = wait_until_ready(store, proc, 2 * timeout + 15)
    except DuplexError as exc:
        fail(exc)
    except KeyboardInterrupt:  # the user gave up waiting: take back what we started
        err_console.print("interrupted — stopping what was started …")
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        store.clear()
        raise typer.Exit(130) from None
    _print_status(state)
    console.print(
        f"supervisor running in the background (pid {state.supervisor_pid}); "
        "`duplexctl logs NAME` to read a log, `duplexctl down` to stop"
    )


def _up_foreground(store: StateStore, specs: list[DaemonSpec], timeout: float) -> None:
    from duplexctl.supervise.proc import Timing
    from duplexctl.supervise.supervisor import serve
    from duplexd.logging import configure_logging

    # Supervisor events (restarts, slow pongs) as readable lines under the table.
    configure_logging("INFO", json=False, process="supervisor")

    async def on_ready(state: FleetState) -> None:
        console.print(await _status_table(state))
        err_console.print("supervising — press Ctrl-C to stop all daemons", style="dim")

    try:
        asyncio.run(serve(specs, store, timing=Timing(ready_timeout_s=timeout), on_ready=on_ready))
    except DuplexError as exc:
        store.clear()
        fail(exc)
    err_console.print("all daemons stopped")


def _describe(specs: list[DaemonSpec]) -> str:
    workers = sum(1 for s in specs if s.kind == "worker")
    text = f"{workers} worker{'s' if workers != 1 else ''}"
    return text + (" and the orchestrator" if len(specs) > workers else "")


def down(
    grace: Annotated[
        float, typer.Option(help="Seconds each daemon gets to drain before SIGKILL.")
    ] = 5.0,
) -> None:
    """Stop the supervisor and every daemon it runs (gracefully, then by force).

    [bold]Examples[/bold]

      duplexctl down
    """
    from duplexctl.supervise.control import stop_fleet
    from duplexctl.supervise.state import StateStore

    store = StateStore()
    try:
        with err_console.status("stopping …"):
            report = stop_fleet(store, grace_s=grace)
    except DuplexError as exc:
        fail(exc)
    if report is None:
        console.print("nothing running")
        return
    if report.supervisor_pid:
        console.print(f"stopped the supervisor (pid {report.supervisor_pid}) and its daemons")
    if report.stopped:
        console.print(f"stopped daemons left without a supervisor: {', '.join(report.stopped)}")
    if report.killed:
        err_console.print(f"had to SIGKILL: {', '.join(report.killed)}", style="yellow")
    if not report.supervisor_pid and not report.stopped:
        console.print("nothing was running; cleared the stale state")


def status(redis: RedisOpt = None) -> None:
    """Show each daemon: pid, address, state, uptime, restarts and a live ping.

    With a Redis registry (--redis or DUPLEX_REDIS_URL): every worker of the fleet, too.

    Exit code 0 when the supervisor runs (or nothing was started), 8 when the state says
    daemons were started but their supervisor is gone; 8 (7: credentials refused) when the
    registry cannot be read.

    [bold]Examples[/bold]

      duplexctl status

      duplexctl status --redis redis://10.0.0.2:6379/0  the whole fleet

      DUPLEX_STATE_DIR=/tmp/duplex duplexctl status     another state directory
    """
    from duplexctl.client.fleet import redis_url
    from duplexctl.supervise.state import StateStore

    store = StateStore()
    state = store.read()
    url = redis_url(redis)
    if state is None:
        console.print(_NOTHING if url is None else "no daemons running on this host")
    else:
        _print_status(state)
    fleet_error = _print_fleet(url) if url else None
    if state is not None and not state.supervisor_alive():
        fail(
            DaemonUnavailable(
                f"the supervisor (pid {state.supervisor_pid}) is not running",
                hint="`duplexctl down` stops what is left and clears the state, "
                "then `duplexctl up`",
            )
        )
    if state is not None:
        console.print(f"supervisor pid {state.supervisor_pid} · {state.phase} · state {store.root}")
    if fleet_error is not None:
        fail(fleet_error)


def _print_fleet(url: str) -> DuplexError | None:
    """The registry's workers as a table; the error instead when Redis cannot be read."""
    from duplexctl.client.fleet import registry_entries
    from duplexd.fleet.keys import redact_url

    try:
        entries = registry_entries(url)
    except DuplexError as exc:
        return exc
    where = redact_url(url)
    if not entries:
        console.print(f"fleet registry {where}: no workers registered")
        return None
    # SESS/Q: sessions / queued frames; P50: first-audio latency; SEEN: since the last heartbeat
    columns = ("WORKER", "ADDRESS", "DEVICE", "RESIDENT", "SESS/Q", "P50", "SEEN")
    rows = [_fleet_row(e) for e in entries]
    title = f"fleet registry {where}: {len(entries)} worker{'s' if len(entries) != 1 else ''}"
    console.print(table(*columns, rows=rows, title=title, no_wrap=columns))
    return None


def _fleet_row(e: dict[str, Any]) -> list[str | Text]:
    metrics, hardware = e.get("metrics") or {}, e.get("hardware") or {}
    age = max(time.time() - float(e.get("heartbeat_unix") or 0), 0.0)
    p50 = float(metrics.get("p50_ms") or 0)
    return [
        str(e["name"]),
        str(e["addr"]).removeprefix("grpc://"),
        str(hardware.get("device") or "—"),
        "\n".join(e.get("resident_models") or []) or "—",  # one per line: ids never fold
        f"{metrics.get('active_sessions', '?')}/{metrics.get('queue_depth', '?')}",
        f"{p50:.0f}ms" if p50 else "—",
        f"{age:.1f}s",
    ]


def _print_status(state: FleetState) -> None:
    console.print(asyncio.run(_status_table(state)))


async def _status_table(state: FleetState) -> object:
    from duplexctl.supervise.control import probe

    rows = [_status_row(s) for s in await probe(state)]
    columns = ("DAEMON", "PID", "ADDRESS", "STATE", "UPTIME", "RESTARTS", "PING")
    return table(*columns, rows=rows, no_wrap=columns)


def _status_row(s: DaemonStatus) -> list[str | Text]:
    r = s.record
    ping: str | Text = f"{s.ping_ms:.1f} ms" if s.ping_ms is not None else "—"
    if s.ping_error:
        ping = Text("no answer", style="red")
    return [
        r.name,
        str(r.pid) if r.pid and s.state not in ("dead",) else "—",
        r.addr or "—",
        Text(s.state, style=_STATE_STYLES.get(s.state, "red")),
        duration(s.uptime_s) if s.uptime_s is not None else "—",
        str(r.restarts),
        ping,
    ]


def logs(
    name: Annotated[
        str | None, typer.Argument(help="Daemon name (see `duplexctl status`); omit to list.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until Ctrl-C.")
    ] = False,
    lines: Annotated[
        int | None, typer.Option("--lines", "-n", min=0, help="Only the last N lines.")
    ] = None,
) -> None:
    """Print a daemon's log (JSON lines), or list the log files.

    [bold]Examples[/bold]

      duplexctl logs                        which logs exist

      duplexctl logs tts-worker@0 -f        follow worker 0

      duplexctl logs supervisor -n 50       the background supervisor's last 50 lines
    """
    from duplexctl.supervise.logs import log_files
    from duplexctl.supervise.state import StateStore

    store = StateStore()
    files = log_files(store)
    if name is None:
        _list_logs(store, files)
        return
    if name not in files:
        known = ", ".join(files) or "none yet"
        fail(InvalidArgument(f"no log for {name!r}; known: {known}"))
    _print_log(files[name], follow, lines)


def _list_logs(store: StateStore, files: dict[str, Path]) -> None:
    if not files:
        console.print(f"no logs yet in {store.logs_dir} — start daemons with `duplexctl up`")
        return
    rows = [
        [name, str(path), f"{path.stat().st_size / 1024:.1f} KiB", _ago(path.stat().st_mtime)]
        for name, path in files.items()
    ]
    console.print(table("NAME", "FILE", "SIZE", "MODIFIED", rows=rows, no_wrap=("NAME", "FILE")))


def _ago(mtime: float) -> str:
    return f"{duration(max(time.time() - mtime, 0))} ago"


def _print_log(path: Path, follow: bool, lines: int | None) -> None:
    from duplexctl.supervise.logs import follow as follow_file
    from duplexctl.supervise.logs import read_log

    text, offset = read_log(path, lines)
    typer.echo(text, nl=False)  # raw: log lines are not rich markup
    if not follow:
        return
    try:
        for chunk in follow_file(path, offset):
            typer.echo(chunk, nl=False)
    except KeyboardInterrupt:
        pass
