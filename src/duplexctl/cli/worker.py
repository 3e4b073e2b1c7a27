"""`duplexctl worker join`: run a TTS worker on this host that joins a fleet through Redis.

The worker runs in the foreground (its JSON log on stderr, Ctrl-C drains and stops it) and
announces itself in the Redis registry, where every orchestrator using that Redis finds it
within a heartbeat. The command prints where it registered once the worker serves.
"""

# grpc and duplexd.config load in the worker process, not here: `--help` stays instant

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from duplexctl.cli._common import console, err_console, fail
from duplexd.errors import DaemonUnavailable, InvalidArgument
from duplexd.launch import Launched, LaunchError, LaunchSpec, launch

__all__ = ["app", "join"]

app = typer.Typer(
    help="Run TTS workers that join a fleet (Redis registry) from this host.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

_METRICS_OFFSET = 2100  # as `duplexctl up`: gRPC 7001 → /metrics 9101


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def join(
    ctx: typer.Context,
    redis: Annotated[
        str | None,
        typer.Option(
            "--redis",
            help="Fleet registry: redis://[USER:PASS@]HOST:6379/0 or rediss:// "
            "(default: DUPLEX_REDIS_URL).",
        ),
    ] = None,
    advertise: Annotated[
        str | None,
        typer.Option(
            "--advertise",
            help="HOST[:PORT] orchestrators on other hosts dial (this machine's LAN address).",
        ),
    ] = None,
    port: Annotated[int, typer.Option("--port", "-p", help="gRPC port.")] = 7001,
    name: Annotated[
        str | None,
        typer.Option(help="Worker name, unique in the fleet (default: tts-HOSTNAME-PORT)."),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(help="Bind address (default: 0.0.0.0 with --advertise, else 127.0.0.1)."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds the worker may take to load its models.")
    ] = 120.0,
) -> None:
    """Run a TTS worker in the foreground that registers in the fleet's Redis.

    Other flags go to `duplexd worker` as they are (--preload-models, --device, --config …).

    Binding beyond loopback needs DUPLEX_API_KEY (or --allow-insecure-remote).

    [bold]Examples[/bold]

      duplexctl worker join --redis redis://10.0.0.2:6379/0 --advertise 10.0.0.7:7001

      CUDA_VISIBLE_DEVICES=1 duplexctl worker join -p 7002 --device cuda:0 --preload-models X
    """
    url = redis or os.environ.get("DUPLEX_REDIS_URL")
    if not url:
        fail(
            InvalidArgument(
                "no fleet registry given",
                hint="pass --redis redis://HOST:6379/0 (or set DUPLEX_REDIS_URL)",
            )
        )
    extra = list(ctx.args)
    from duplexd.config import fleet_worker_name  # what an unnamed fleet worker calls itself

    name = name or fleet_worker_name(port)
    bind = host or ("0.0.0.0" if advertise else "127.0.0.1")  # noqa: S104  # reachable for --advertise
    with tempfile.TemporaryDirectory(prefix="duplex-join-") as tmp:
        ready = Path(tmp) / "worker.ready.json"
        argv = [sys.executable, "-m", "duplexd", "worker", "--name", name, "--host", bind]
        argv += ["--port", str(port), "--ready-file", str(ready)]
        if advertise:
            argv += ["--advertise", advertise]
        if not any(a.split("=")[0] in ("--metrics-port", "--metrics_port") for a in extra):
            argv += ["--metrics-port", str(port + _METRICS_OFFSET if port else 0)]
        # The URL goes in the environment: a password in it never shows in `ps`.
        env = {**os.environ, "DUPLEX_REDIS_URL": url}
        err_console.print(f"starting worker {name} on {bind}:{port} …", style="dim")
        spec = LaunchSpec("worker", argv=[*argv, *extra], ready_file=ready, env=env,
                          own_group=False)  # fmt: skip  # Ctrl-C reaches it: it drains
        code = _serve(launch(spec), name, timeout, loopback=not advertise and _loopback(bind))
    raise typer.Exit(code)


def _serve(launched: Launched, name: str, timeout: float, *, loopback: bool) -> int:
    """Wait until it serves, say where it registered, then run until it exits (or we stop)."""
    proc = launched.proc
    previous = signal.signal(signal.SIGTERM, lambda *_: launched.signal(signal.SIGTERM))
    try:
        info = _wait_ready(launched, timeout)
        if info is not None:
            _report(name, info, loopback=loopback)
        return _wait(proc)
    except KeyboardInterrupt:  # Ctrl-C reached the worker too (same process group): it drains
        return _wait(proc)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait_ready(launched: Launched, timeout: float) -> dict[str, Any] | None:
    try:
        return launched.wait_ready(timeout)
    except LaunchError as exc:
        if "not ready after" not in exc.message:
            return None  # it exited and said why on stderr; we exit with its code
        fail(DaemonUnavailable(f"the worker was not ready within {timeout:.0f} s"))


def _report(name: str, info: dict[str, Any], *, loopback: bool) -> None:
    reg = info.get("registry") or {}
    where = f"grpc://{reg.get('advertise', info.get('addr'))}"
    if reg.get("registered"):
        console.print(
            f"worker {name} registered in {reg.get('redis')} as {where} "
            f"(key {reg.get('key')}); serving on {info.get('addr')} — Ctrl-C to leave the fleet",
            soft_wrap=True,  # one line: scripts grep it
        )
    else:
        err_console.print(
            Text(
                f"worker {name} serves on {info.get('addr')}, but Redis {reg.get('redis')} did "
                f"not answer: it registers as {where} as soon as Redis does",
                style="yellow",
            )
        )
    if loopback:
        err_console.print(
            "note: it listens on loopback only, so only orchestrators on this host can use it; "
            "for other hosts pass --advertise HOST:PORT",
            style="dim",
        )


def _wait(proc: subprocess.Popen[bytes]) -> int:
    """The worker's exit code (128 + N when signal N ended it, as a shell reports it)."""
    while True:
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting for the drain
            proc.kill()
            continue
        return 128 - code if code < 0 else code


def _loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
