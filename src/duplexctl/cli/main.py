"""The `duplexctl` root app: every command group hangs off `app` here.

Adding a group is one line in the "command groups" block at the bottom:

- a group of subcommands (``duplexctl models list``): write ``duplexctl/cli/models.py`` (or a
  package, as ``duplexctl/cli/models/`` is) with its own ``app = typer.Typer(help=...)`` and
  register it with ``app.add_typer(models.app, name="models")``;
- a single command (``duplexctl talk``): write a function in ``duplexctl/cli/talk.py`` and
  register it with ``app.command(name="talk")(talk.talk_command)``.

Use ``duplexctl.cli._common`` for output (`console`, `err_console`, `table`) and for ending a
command on an error (`fail`). Keep `duplexctl --help` instant: a group module imports only typer,
rich, the standard library and ``_common`` at module level. grpc, textual, numpy, sounddevice,
the engines and even ``duplexd.config`` (it pulls numpy in) are imported inside the command body
that needs them; ``tests/unit/test_cli_main.py`` checks this.
"""

from __future__ import annotations

from typing import Annotated

import typer

from duplexctl import __version__
from duplexctl.cli import bench, daemons, dash, demo, doctor, models, say, talk, worker

__all__ = ["app", "main"]

# Typer keeps single line breaks in rich mode, so each paragraph is one (concatenated) line.
_HELP = (
    "duplex: a realtime full-duplex voice stack (VAD + Whisper ASR, streaming TTS workers with a"
    " model manager, sub-50 ms barge-in), driven from the terminal."
    "\n\n"
    "duplexctl is the console: it checks the machine, starts the daemons (duplexd worker,"
    " duplexd orchestrator), talks to them and shows what they are doing. The embedded default"
    " runs on one CPU box with no Redis, Docker or GPU; those only matter when you scale out."
)

_EPILOG = """\
[bold]Examples[/bold]
  duplexctl doctor                 is this machine ready to run duplex?
  duplexctl doctor --json          the same checks as JSON (scripts, CI)
  duplexctl doctor --redis URL     also PING a fleet's Redis registry
  duplexctl COMMAND --help         the options of one command

Settings: configs/*.yaml < DUPLEX_* variables < command-line flags."""

app = typer.Typer(
    name="duplexctl",
    help=_HELP,
    epilog=_EPILOG,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    # Tracebacks with locals are for our bugs; expected errors end through _common.fail().
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"duplexctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            help="Print the duplex version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Root options; each command brings its own."""


# --- command groups: one line each (see the module docstring) ------------------------------
for _daemon_cmd in (daemons.up, daemons.down, daemons.status, daemons.logs):
    app.command()(_daemon_cmd)
app.command(name="talk")(talk.talk)
app.command(name="say")(say.say)
app.command(name="demo")(demo.demo)
app.command(name="dash")(dash.dash)
app.command(name="bench")(bench.bench)
app.add_typer(models.app, name="models")
app.add_typer(worker.app, name="worker")
app.command(name="doctor")(doctor.doctor_command)


def main() -> None:
    """Console-script entry point (`duplexctl = duplexctl.cli.main:main`)."""
    app(prog_name="duplexctl")
