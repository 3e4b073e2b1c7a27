"""`duplexctl bench`: measure a real worker (and the ASR engines) and write a JSON report.

Register with ``app.command(name="bench")(bench.bench)``. Everything heavy (grpc, numpy, the
engines) is imported inside the command; `duplexctl --help` stays instant.
"""

from __future__ import annotations

import json
import shlex
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from duplexctl.bench import ALL, ORDER, PLANNED
from duplexctl.cli._common import console, err_console, fail
from duplexctl.cli.tables import Output, OutputOpt, emit, print_json
from duplexd.errors import InvalidArgument

__all__ = ["bench"]

_SUITES = " | ".join([*ORDER, ALL])


def bench(
    suite: Annotated[
        list[str] | None,
        typer.Option("--suite", "-s", help=f"{_SUITES} (repeatable) \\[all]", show_default=False),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Model id to measure (repeatable) \\[piper-en-us-joe, espeak-en].",
            show_default=False,
        ),
    ] = None,
    json_file: Annotated[
        Path | None,
        typer.Option(
            "--json", help="Write the report here \\[bench-<date>.json].", show_default=False
        ),
    ] = None,
    compare: Annotated[
        Path | None,
        typer.Option("--compare", help="An earlier report: print the change of every figure."),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Fewer utterances, levels and trials (a few minutes).")
    ] = False,
    worker: Annotated[
        str | None,
        typer.Option(
            "--worker",
            "-w",
            help="HOST:PORT of a running worker \\[start an embedded one for the run].",
        ),
    ] = None,
    from_file: Annotated[
        Path | None,
        typer.Option("--from", help="Run nothing: show (and --compare) a saved report."),
    ] = None,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Benchmark first-audio latency, cadence, model loading, capacity and ASR.

    Every figure that depends on the machine is shown beside a reference measured in the same
    run (the raw engine in this process, the configured TTL, a fixed CPU workload), and beside
    its target from the issues. A suite whose module does not exist yet answers "not available
    yet" (exit code 2) instead of inventing numbers; `--suite all` lists it as skipped.

    [bold]Examples[/bold]

      duplexctl bench --quick                        every available suite, a few minutes

      duplexctl bench --suite tts -m piper-en-us-joe --json tts.json

      duplexctl bench --suite tts --compare tts.json  run again and show what changed

      duplexctl bench --from new.json --compare old.json
    """
    from duplexctl.bench import report as rep
    from duplexctl.bench.runner import BenchOptions, plan, run_bench

    suites = suite or [ALL]
    try:
        plan(suites)
    except ValueError as exc:
        fail(InvalidArgument(f"unknown suite {exc}", hint=f"choose from {_SUITES}"))
    except LookupError as exc:
        ready = ", ".join(s for s in ORDER if s not in PLANNED)
        fail(InvalidArgument(str(exc), hint=f"available now: {ready}"), code=2)
    old = _read_report(compare, "--compare") if compare is not None else None

    if from_file is not None:
        report = _read_report(from_file, "--from")
        modules = _modules_for(report)
    else:
        if worker is not None and ":" not in worker:
            worker = _resolve_worker(worker)
        options = BenchOptions(
            suites=suites,
            models=tuple(model or ()),
            worker=worker,
            quick=quick,
            command=_command_line(suites, model, json_file, compare, quick, worker),
        )
        report, modules = _run(options, run_bench)
        path = json_file or Path(f"bench-{datetime.now():%Y%m%d-%H%M%S}.json")
        problems = rep.validate(report)
        if problems:  # a bug in a suite: say so, keep the data
            err_console.print(f"[yellow]report does not match schema.json: {problems[:5]}[/]")
        path.write_text(json.dumps(report, indent=2) + "\n")
        err_console.print(f"wrote {path}", highlight=False)

    if output is Output.JSON:  # the report itself (what --json writes to a file)
        print_json(report)
    else:
        targets = report.get("targets", [])
        emit(rep.results_table(report, modules, targets, wide=output is Output.WIDE))
        console.print(rep.summary_lines(report))
        if old is not None:
            emit(rep.compare_table(old, report, f"compared with {compare}"))
    if report["suites"]["failed"]:
        raise typer.Exit(1)
    if not report["suites"]["ran"] and report["suites"]["skipped"]:
        raise typer.Exit(2)  # nothing could run here: say so with the usage code


def _run(options: Any, run_bench: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    import asyncio

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from duplexd.errors import DuplexError

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
    )
    try:
        with progress:
            result: tuple[dict[str, Any], dict[str, Any]] = asyncio.run(
                run_bench(options, progress)
            )
    except DuplexError as exc:
        fail(exc)
    return result


def _read_report(path: Path, flag: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        fail(InvalidArgument(f"{flag} {path}: no such file"))
    except (OSError, ValueError) as exc:
        fail(InvalidArgument(f"{flag} {path}: not a JSON report: {exc}"))
    if not isinstance(data, dict) or "suites" not in data:
        fail(InvalidArgument(f"{flag} {path}: not a duplexctl bench report"))
    return data


def _modules_for(report: dict[str, Any]) -> dict[str, Any]:
    from duplexctl.bench import is_available, load_suite

    return {n: load_suite(n) for n in report["suites"].get("ran", []) if is_available(n)}


def _resolve_worker(name: str) -> str:
    """A daemon name from `duplexctl up`'s state file → its address."""
    from duplexd.errors import DuplexError

    try:
        from duplexctl.client.fleet import resolve_workers
    except ImportError:
        fail(InvalidArgument(f"--worker {name}: give HOST:PORT"))
    try:
        return resolve_workers(name)[0].addr
    except DuplexError as exc:
        fail(exc)


def _command_line(
    suites: list[str],
    models: list[str] | None,
    json_file: Path | None,
    compare: Path | None,
    quick: bool,
    worker: str | None,
) -> str:
    args = ["duplexctl", "bench"]
    for s in suites:
        args += ["--suite", s]
    for m in models or ():
        args += ["--model", m]
    if worker:
        args += ["--worker", worker]
    if quick:
        args.append("--quick")
    if json_file:
        args += ["--json", str(json_file)]
    if compare:
        args += ["--compare", str(compare)]
    return shlex.join(args)
