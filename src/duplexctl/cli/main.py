"""The `duplexctl` root app: every command group hangs off `app` here.

Adding a group is one line in the "command groups" block at the bottom:

- a group of subcommands (``duplexctl models list``): write ``duplexctl/cli/models.py`` (or a
  package, as ``duplexctl/cli/models/`` is) with its own ``app = typer.Typer(help=...)`` and
  register it with ``app.add_typer(models.app, name="models")``;
- a single command (``duplexctl talk``): write a function in ``duplexctl/cli/talk.py`` and
  register it with ``app.command(name="talk")(talk.talk_command)``.

Use ``duplexctl.cli._common`` for output (`console`, `err_console`) and for ending a command on
an error (`fail`), and ``duplexctl.cli.tables`` for tables (`Listing`, `emit`, ``-o`` and its
`OutputOpt`; docs/cli.md). Keep `duplexctl --help` instant: a group module imports only typer,
rich, the standard library and ``_common`` at module level. grpc, textual, numpy, sounddevice,
the engines and even ``duplexd.config`` (it pulls numpy in) are imported inside the command body
that needs them; ``tests/unit/test_cli_main.py`` checks this.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from duplexctl.cli import bench, daemons, dash, demo, doctor, logs, models, say, talk, worker

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
        from duplexctl import __version__

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
for _daemon_cmd in (daemons.up, daemons.down, daemons.status, logs.logs):
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
    if _asks_for_help(sys.argv[1:]):
        defer_rich_extras()
    app(prog_name="duplexctl")


def _asks_for_help(args: list[str]) -> bool:
    return not args or any(a in ("-h", "--help") for a in args)


def _deferred(module: str, name: str) -> type:
    """A class standing for `module.name`: calling it, or asking it an attribute, imports the
    real class and hands over to it (it also works in ``X | Y`` annotations)."""
    import importlib

    def target() -> Any:
        return getattr(importlib.import_module(module), name)

    class Deferred(type):
        def __getattr__(cls, attr: str) -> Any:
            return getattr(target(), attr)

    class StandIn(metaclass=Deferred):
        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            return target()(*args, **kwargs)

    StandIn.__name__ = StandIn.__qualname__ = name
    StandIn.__module__ = module
    return StandIn


def defer_rich_extras() -> None:
    """Import typer's help renderer without rich's Markdown and Traceback.

    `typer.rich_utils` imports both at its top (markdown-it, pygments: ~0.2 s, most of what
    `duplexctl --help` used to take) for markdown help and pretty tracebacks, and duplexctl
    uses neither (rich markup help; expected errors end through `fail`). They stay reachable:
    rich_utils gets stand-ins that import the real class when first used, and the stand-in
    modules leave `sys.modules` at once, so anyone else importing them gets the real ones.
    """
    if "typer.rich_utils" in sys.modules:
        return
    import types

    stand_ins: dict[str, types.ModuleType] = {}
    for module, name in (("rich.markdown", "Markdown"), ("rich.traceback", "Traceback")):
        if module not in sys.modules:
            stand_ins[module] = types.ModuleType(module)
            setattr(stand_ins[module], name, _deferred(module, name))
    sys.modules.update(stand_ins)
    try:
        import typer.rich_utils  # noqa: F401
    finally:
        for module, stub in stand_ins.items():
            if sys.modules.get(module) is stub:
                del sys.modules[module]
