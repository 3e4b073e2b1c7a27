"""Reaching the workers: which ones, one call each at once, or each model on each in turn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.text import Text

from duplexctl.cli._common import console, err_console, fail
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

    return list(await asyncio.gather(*(one(t) for t in targets)))


def each(
    targets: Sequence[WorkerTarget],
    models: Sequence[str],
    call: Callable[[TTSClient, str], Awaitable[Any]],
    message: Callable[[str, str, Any], str],
    doing: str,
) -> None:
    """Run `call` for each model on each worker, in order; report each; exit on any error."""
    errors = run(_each_async(targets, models, call, message, doing))
    if errors:
        raise typer.Exit(errors[0].exit_code)


async def _each_async(
    targets: Sequence[WorkerTarget],
    models: Sequence[str],
    call: Callable[[TTSClient, str], Awaitable[Any]],
    message: Callable[[str, str, Any], str],
    doing: str,
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
                        _print_error(exc, target, len(targets))
                        errors.append(exc)
                        continue
                    console.print(message(model, str(target), resp))
        except DuplexError as exc:
            _print_error(exc, target, len(targets))
            errors.append(exc)
    return errors


async def _with_spinner(call: Awaitable[T], doing: str, model: str, target: WorkerTarget) -> T:
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


def exit_on_errors(results: Sequence[tuple[WorkerTarget, object]]) -> None:
    errors = [(t, r) for t, r in results if isinstance(r, DuplexError)]
    for target, exc in errors:
        _print_error(exc, target, len(results))
    if errors:
        raise typer.Exit(errors[0][1].exit_code)
