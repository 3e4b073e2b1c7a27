"""Reaching the workers: which ones, one call each at once, or each model on each in turn."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.text import Text

from duplexctl.cli._common import console, err_console, fail
from duplexctl.cli.tables import Output, print_json
from duplexd.errors import DuplexError

if TYPE_CHECKING:
    from duplexctl.client.fleet import WorkerTarget
    from duplexd.rpc.client import TTSClient

__all__ = ["each", "exit_on_errors", "gather", "run", "worker_targets"]

T = TypeVar("T")


def worker_targets(
    selector: str | None, redis: str | None = None, *, whole_fleet: bool = False
) -> list[WorkerTarget]:
    """Local workers (or `selector`); with a registry, registered ones too (see package doc)."""
    from duplexctl.client.fleet import redis_url, registered_workers, resolve_workers
    from duplexctl.format import redact_url

    url = redis_url(redis)
    registered: list[WorkerTarget] = []
    if url and (whole_fleet or (selector is not None and ":" not in selector)):
        try:
            registered = registered_workers(url)
        except DuplexError as exc:
            err_console.print(
                Text(f"warning: fleet registry {redact_url(url)}: {exc.message}", style="yellow")
            )
    try:
        return resolve_workers(selector, registered=registered, whole_fleet=whole_fleet)
    except DuplexError as exc:
        fail(exc)


def run(coro: Coroutine[Any, Any, T]) -> T:
    import asyncio

    try:
        return asyncio.run(coro)
    except DuplexError as exc:
        fail(exc)


async def gather(
    targets: Sequence[WorkerTarget], call: Callable[[TTSClient], Awaitable[T]]
) -> list[tuple[WorkerTarget, T | DuplexError]]:
    """One call per worker, all at once; a worker's error is kept as its result."""

    async def one(target: WorkerTarget) -> tuple[WorkerTarget, T | DuplexError]:
        from duplexctl.client.fleet import connect

        try:
            async with connect(target) as client:
                return target, await call(client)
        except DuplexError as exc:
            return target, exc

    import asyncio

    return list(await asyncio.gather(*(one(t) for t in targets)))


Record = Callable[[str, "WorkerTarget", Any], dict[str, Any]]
"""(model, worker, response) -> the JSON record of one success (`-o json`)."""


def each(
    targets: Sequence[WorkerTarget],
    models: Sequence[str],
    call: Callable[[TTSClient, str], Awaitable[Any]],
    message: Callable[[str, str, Any], str],
    doing: str,
    *,
    record: Record | None = None,
    output: Output = Output.TABLE,
) -> None:
    """Run `call` for each model on each worker, in order; report each; exit on any error.

    With ``-o json`` the reports are one JSON document, ``{"results": [...]}``: a `record` per
    success, ``{"model", "worker", "worker_addr", "ok": false, "error", "exit_code"}`` per
    failure (the error is on stderr too)."""
    as_json = output is Output.JSON and record is not None
    results: list[dict[str, Any]] = []

    def done(model: str, target: WorkerTarget, resp: Any) -> None:
        if as_json:
            assert record is not None
            results.append({**record(model, target, resp), "ok": True})
        else:
            console.print(message(model, str(target), resp))

    def failed(model: str | None, target: WorkerTarget, exc: DuplexError) -> None:
        _print_error(exc, target, len(targets))
        results.append(
            {"model": model, "worker": target.name, "worker_addr": target.addr, "ok": False,
             "error": exc.message, "exit_code": exc.exit_code}
        )  # fmt: skip

    errors = run(_each_async(targets, models, call, doing, done, failed))
    if as_json:
        print_json({"results": results})
    if errors:
        raise typer.Exit(errors[0].exit_code)


async def _each_async(
    targets: Sequence[WorkerTarget],
    models: Sequence[str],
    call: Callable[[TTSClient, str], Awaitable[Any]],
    doing: str,
    done: Callable[[str, WorkerTarget, Any], None],
    failed: Callable[[str | None, WorkerTarget, DuplexError], None],
) -> list[DuplexError]:
    from duplexctl.client.fleet import connect

    errors: list[DuplexError] = []
    for target in targets:
        try:
            async with connect(target) as client:
                for model in models:
                    try:
                        resp = await _with_spinner(call(client, model), doing, model, target)
                    except DuplexError as exc:
                        failed(model, target, exc)
                        errors.append(exc)
                        continue
                    done(model, target, resp)
        except DuplexError as exc:
            failed(None, target, exc)
            errors.append(exc)
    return errors


async def _with_spinner(call: Awaitable[T], doing: str, model: str, target: WorkerTarget) -> T:
    import asyncio

    if not doing:
        return await call
    started = time.perf_counter()
    with err_console.status(f"{doing} {model} on {target} …") as spinner:
        task = asyncio.ensure_future(call)
        while not task.done():
            await asyncio.wait({task}, timeout=0.1)
            spinner.update(f"{doing} {model} on {target} … {time.perf_counter() - started:.1f} s")
        return task.result()


def _print_error(exc: DuplexError, target: WorkerTarget, fleet: int) -> None:
    prefix = f"{target}: " if fleet > 1 else ""
    err_console.print(Text(f"error: {prefix}{exc.message}", style="bold red"))
    if exc.hint:
        err_console.print(Text(f"  hint: {exc.hint}", style="red"))


def exit_on_errors(results: Sequence[tuple[WorkerTarget, object]], *, quiet: bool = False) -> None:
    """Print each worker's error on stderr (`quiet`: the JSON already holds them) and exit
    with the first one's code."""
    errors = [(t, r) for t, r in results if isinstance(r, DuplexError)]
    for target, exc in errors:
        if not quiet:
            _print_error(exc, target, len(results))
    if errors:
        raise typer.Exit(errors[0][1].exit_code)
