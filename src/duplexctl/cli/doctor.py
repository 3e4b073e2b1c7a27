"""`duplexctl doctor`: can this machine run duplex, and if not, what to do about it.

Each check (in `duplexctl.cli.doctor_checks`) is a small function of a `Context` returning one
`Check` row (or several: one per model, one per GPU). Checks are independent: one that raises
is turned into a "fail" row with the exception text, so doctor always finishes and always
prints the full picture. A row is "warn" when an optional feature is missing and "fail" when
the embedded default (`duplexctl up`) cannot work; the exit code is 1 when any row fails.

Module level imports stay light (this module is imported for `duplexctl --help`); everything that
touches numpy, PortAudio, Redis or NVML is imported inside its check.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from duplexctl.cli._common import console, err_console, table
from duplexctl.cli.doctor_checks import (
    Check,
    CheckFn,
    Context,
    Status,
    check_audio_devices,
    check_configs,
    check_espeak,
    check_extras,
    check_gpu,
    check_memory,
    check_models,
    check_portaudio,
    check_python,
    check_redis,
    check_version,
)
from duplexctl.cli.tables import emit

__all__ = ["CHECKS", "Check", "Context", "doctor_command", "run_checks"]

_STYLES: dict[Status, str] = {"ok": "bold green", "warn": "bold yellow", "fail": "bold red"}


# --- running and reporting --------------------------------------------------------------------

CHECKS: tuple[tuple[str, CheckFn], ...] = (
    ("python", check_python),
    ("duplex", check_version),
    ("extras", check_extras),
    ("config", check_configs),
    ("portaudio", check_portaudio),
    ("audio devices", check_audio_devices),
    ("espeak-ng", check_espeak),
    ("models", check_models),
    ("redis", check_redis),
    ("memory", check_memory),
    ("gpu", check_gpu),
)


def run_checks(ctx: Context, checks: tuple[tuple[str, CheckFn], ...] = CHECKS) -> list[Check]:
    rows: list[Check] = []
    for name, check in checks:
        try:
            result = check(ctx)
        except Exception as exc:  # doctor must never crash: the row says what broke
            detail = f"check crashed: {type(exc).__name__}: {exc}"
            rows.append(Check(name, "fail", detail, "a bug in doctor or duplex: please report it"))
            continue
        rows.extend([result] if isinstance(result, Check) else result)
    return rows


def _render(rows: list[Check]) -> None:
    cells = [(r.name, Text(r.status, style=_STYLES[r.status]), r.detail, r.fix) for r in rows]
    columns = ("Check", "Status", "Detail", "Fix")
    ratios = {"Detail": 3, "Fix": 2}  # details (paths, errors) need more room than fixes
    emit(table(*columns, rows=cells, no_wrap=("Check",), ratios=ratios))
    counts = {s: sum(r.status == s for r in rows) for s in _STYLES}
    summary = f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail: "
    if counts["fail"]:
        console.print(Text(summary + "fix the failed rows above", style="bold red"))
    else:
        console.print(Text(summary + "ready (warnings are optional features)", style="bold green"))


def doctor_command(
    config_dir: Annotated[
        Path | None,
        typer.Option(
            "--config-dir",
            help="Folder holding worker.yaml and orchestrator.yaml (default: checkout's configs/).",
            exists=True,
            file_okay=False,
            metavar="DIR",
        ),
    ] = None,
    redis: Annotated[
        str | None,
        typer.Option(
            "--redis",
            help="Redis URL to PING (default: DUPLEX_REDIS_URL, else redis.url in the configs).",
            metavar="URL",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Check this machine: Python, extras, audio, espeak-ng, configs, models, Redis, RAM, GPU.

    Every problem comes with its fix. Exits 1 when a check fails, so it can gate CI or a deploy.
    """
    from duplexd.config import repo_root

    ctx = Context(config_dir or repo_root() / "configs", config_dir is not None, redis)
    with err_console.status("checking…"):
        rows = run_checks(ctx)
    if as_json:
        typer.echo(json.dumps([asdict(row) for row in rows], indent=2))
    else:
        _render(rows)
    raise typer.Exit(1 if any(row.status == "fail" for row in rows) else 0)
