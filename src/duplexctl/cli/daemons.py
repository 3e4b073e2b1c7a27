"""`duplexctl up / down / status`: run the daemons on this machine and look after them
(`duplexctl logs` is in `duplexctl.cli.logs`, re-exported here).

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

import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from duplexctl.cli._common import console, err_console, fail
from duplexctl.cli.tables import Column, Listing, Output, OutputOpt, emit, note, print_json
from duplexctl.format import duration
from duplexd.errors import DaemonUnavailable, DuplexError

if TYPE_CHECKING:
    from duplexctl.supervise.control import DaemonStatus
    from duplexctl.supervise.spec import DaemonSpec
    from duplexctl.supervise.state import FleetState, StateStore

from duplexctl.cli.logs import logs

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
    import asyncio

    from duplexctl.supervise.proc import Timing
    from duplexctl.supervise.supervisor import serve
    from duplexd.logging import configure_logging

    # Supervisor events (restarts, slow pongs) as readable lines under the table.
    configure_logging("INFO", json=False, process="supervisor")

    async def on_ready(state: FleetState) -> None:
        emit(_status_table(await _probe(state)))
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


def status(redis: RedisOpt = None, output: OutputOpt = Output.TABLE) -> None:
    """Show each daemon: pid, address, state, uptime, restarts and a live ping.

    With a Redis registry (--redis or DUPLEX_REDIS_URL): every worker of the fleet, too.
    On a narrow terminal PID, PING and RESTARTS give way first (`-o wide`: all); piped, the
    table is plain columns; `-o json` gives records (docs/cli.md).

    Exit code 0 when the supervisor runs (or nothing was started), 8 when the state says
    daemons were started but their supervisor is gone; 8 (7: credentials refused) when the
    registry cannot be read.

    [bold]Examples[/bold]

      duplexctl status

      duplexctl status -o json | jq -r '.daemons[].addr'

      duplexctl status --redis redis://10.0.0.2:6379/0  the whole fleet

      DUPLEX_STATE_DIR=/tmp/duplex duplexctl status     another state directory
    """
    from duplexctl.client.fleet import redis_url
    from duplexctl.supervise.state import StateStore

    store = StateStore()
    state = store.read()
    url = redis_url(redis)
    probed = _run(_probe(state)) if state is not None else []
    fleet: list[dict[str, Any]] | DuplexError | None = _fleet_entries(url) if url else None
    gone = state is not None and not state.supervisor_alive()
    if output is Output.JSON:
        print_json(_status_record(store, state, probed, url, fleet))
    else:
        wide = output is Output.WIDE
        if state is None:
            console.print(_NOTHING if url is None else "no daemons running on this host")
        else:
            emit(_status_table(probed, wide=wide))
        if url and not isinstance(fleet, DuplexError):
            _print_fleet(url, fleet or [], wide=wide)
        if state is not None and not gone:
            note(f"supervisor pid {state.supervisor_pid} · {state.phase} · state {store.root}")
    if gone and state is not None:
        fail(
            DaemonUnavailable(
                f"the supervisor (pid {state.supervisor_pid}) is not running",
                hint="`duplexctl down` stops what is left and clears the state, "
                "then `duplexctl up`",
            )
        )
    if isinstance(fleet, DuplexError):
        fail(fleet)


def _run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


def _fleet_entries(url: str) -> list[dict[str, Any]] | DuplexError:
    """The registry's workers, or the error when Redis cannot be read."""
    from duplexctl.client.fleet import registry_entries

    try:
        return list(registry_entries(url))
    except DuplexError as exc:
        return exc


def _print_fleet(url: str, entries: list[dict[str, Any]], *, wide: bool) -> None:
    from duplexd.fleet.keys import redact_url

    where = redact_url(url)
    if not entries:
        console.print(f"fleet registry {where}: no workers registered")
        return
    # SESS/Q: sessions / queued frames; P50: first-audio latency; SEEN: since the last heartbeat
    columns = [
        Column("WORKER"),
        Column("ADDRESS"),
        Column("DEVICE", drop=3),
        Column("RESIDENT", drop=1),
        Column("SESS/Q", drop=2, justify="right"),
        Column("P50", drop=2, justify="right"),
        Column("SEEN", drop=1, justify="right"),
    ]
    title = f"fleet registry {where}: {len(entries)} worker{'s' if len(entries) != 1 else ''}"
    emit(Listing(columns, [_fleet_row(e) for e in entries], title=title, wide=wide))


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
    emit(_status_table(_run(_probe(state))))


async def _probe(state: FleetState | None) -> list[DaemonStatus]:
    from duplexctl.supervise.control import probe

    return await probe(state) if state is not None else []


def _status_table(probed: list[DaemonStatus], *, wide: bool = False) -> Listing:
    columns = [
        Column("DAEMON"),
        Column("PID", drop=3, justify="right"),
        Column("ADDRESS"),
        Column("STATE"),
        Column("UPTIME", drop=1, justify="right"),
        Column("RESTARTS", drop=2, justify="right"),
        Column("PING", drop=3, justify="right"),
        Column("LOG", wide=True),
    ]
    return Listing(columns, [_status_row(s) for s in probed], wide=wide)


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
        r.log,
    ]


def _status_record(
    store: StateStore,
    state: FleetState | None,
    probed: list[DaemonStatus],
    url: str | None,
    fleet: list[dict[str, Any]] | DuplexError | None,
) -> dict[str, Any]:
    """`status -o json` (keys documented in docs/cli.md)."""
    from duplexd.fleet.keys import redact_url

    record: dict[str, Any] = {
        "state_dir": str(store.root),
        "supervisor": None,
        "daemons": [
            {
                "name": s.record.name,
                "kind": s.record.kind,
                "pid": s.record.pid if s.state != "dead" else None,
                "addr": s.record.addr or None,
                "state": s.state,
                "uptime_s": round(s.uptime_s, 1) if s.uptime_s is not None else None,
                "restarts": s.record.restarts,
                "ping_ms": round(s.ping_ms, 2) if s.ping_ms is not None else None,
                "ping_error": s.ping_error,
                "log": s.record.log,
            }
            for s in probed
        ],
    }
    if state is not None:
        record["supervisor"] = {
            "pid": state.supervisor_pid,
            "alive": state.supervisor_alive(),
            "phase": state.phase,
        }
    if url:
        record["fleet"] = {
            "registry": redact_url(url),
            "workers": fleet if isinstance(fleet, list) else None,
            "error": fleet.message if isinstance(fleet, DuplexError) else None,
        }
    return record
