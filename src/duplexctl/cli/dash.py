"""`duplexctl dash`: the live dashboard (Textual) of daemons, models, latency, sessions, logs."""

# textual and grpc load inside the command: `duplexctl --help` stays instant

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["dash"]


def dash(
    worker: Annotated[
        list[str] | None,
        typer.Option(
            "--worker",
            "-w",
            help="Worker gRPC address HOST:PORT (repeatable). Default: the daemons in the state "
            "file of `duplexctl up`.",
        ),
    ] = None,
    orchestrator: Annotated[
        str | None,
        typer.Option("--orchestrator", "-o", help="Orchestrator HTTP address HOST:PORT."),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="State directory of `duplexctl up` (default: $DUPLEX_STATE_DIR, else the "
            "user state dir)."
        ),
    ] = None,
    interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between polls of every daemon.")
    ] = 0.5,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a daemon may take to answer one poll.")
    ] = 1.0,
) -> None:
    """Live dashboard: daemons, memory, models, latency, sessions and logs; load, unload, pin
    and preload models; start, stop and restart daemons.

    Polls every daemon twice a second, each under a deadline, so a hung one never freezes the
    screen: it turns red with its last log line.

    [bold]Keys[/bold]

      Ctrl+P   command palette: "Load model espeak-en", "Unload model …", "Stop daemons" …
      Tab      next panel                          q        quit
      [dim]models panel: the model under the cursor[/dim]
      l        load it                             u        unload it (asks first)
      p        pin it (loads it if needed)         P        unpin it
      U        unload even if pinned or default    a        preload it on every worker
      [dim]anywhere[/dim]
      s        start daemons (duplexctl up --detach)
      x        stop daemons (duplexctl down; asks first)
      r        restart the selected daemon         R        restart all (asks first)
      /        filter the logs: words, level:warning
      F5       poll now

    [bold]Examples[/bold]

      duplexctl dash                              what `duplexctl up` started

      duplexctl dash --worker 127.0.0.1:7001      a worker started by hand

      duplexctl dash -w h1:7001 -w h2:7001 -o h1:8080     two workers and an orchestrator
    """
    from duplexctl.client.fleet import api_key
    from duplexctl.tui.app import DaemonControl, DashApp
    from duplexctl.tui.data import Poller, Sources

    sources = Sources(workers=tuple(worker or ()), orchestrator=orchestrator, state_dir=state_dir)
    poller = Poller(sources, timeout_s=timeout, api_key=api_key())
    app = DashApp(poller=poller, control=DaemonControl(state_dir=state_dir), interval_s=interval)
    app.run()
