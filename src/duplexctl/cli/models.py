"""`duplexctl models list|load|unload|pin|unpin|preload`: the workers' Model Managers.

`list` reads like `ollama ps`: what each worker has resident, how much memory it takes and
how long it stays (the idle TTL counting down, "forever" for pinned and default models).
Every other command is one RPC per model and worker; a refusal (unknown model, in use, no
room, busy) prints the worker's reason and exits with that error's code (see errors.py).

Without ``--worker`` a command goes to every worker `duplexctl up` started (else to
127.0.0.1:7001). With a fleet registry (``--redis URL`` or ``DUPLEX_REDIS_URL``) `list` shows
every registered worker too, and ``--worker NAME`` also finds workers registered there.
"""

# grpc loads inside the commands so `duplexctl --help` stays instant

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.text import Text

from duplexctl.cli._common import console, err_console, fail, table
from duplexd.errors import DuplexError, InvalidArgument

if TYPE_CHECKING:
    from duplexctl.client.fleet import WorkerTarget
    from duplexd.rpc import tts_pb2 as pb
    from duplexd.tts.client import TTSClient

__all__ = ["app"]

T = TypeVar("T")

app = typer.Typer(
    help="List, load, unload and pin TTS models on the workers.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    epilog="""\
[bold]Examples[/bold]

  duplexctl models list                          every model on every worker

  duplexctl models load espeak-en                load (and warm) a model

  duplexctl models preload espeak-en,piper-en-us-joe

  duplexctl models pin espeak-en                 never evict it; `unpin` undoes

  duplexctl models unload espeak-en --force      even if pinned or the default

  duplexctl models list --worker 10.0.0.7:7001   one worker, by address or daemon name

  duplexctl models list --redis redis://h:6379   every worker registered in the fleet
""",
)

WorkerOpt = Annotated[
    str | None,
    typer.Option(
        "--worker",
        "-w",
        help="Daemon name (tts-worker@0) or HOST:PORT (default: every started worker).",
    ),
]
RedisOpt = Annotated[
    str | None,
    typer.Option(
        "--redis",
        help="Fleet registry URL (default: DUPLEX_REDIS_URL): include registered workers.",
    ),
]
ModelArg = Annotated[str, typer.Argument(help="Model id, as `duplexctl models list` shows it.")]

_STATES = {1: "not loaded", 2: "loading", 3: "resident", 4: "unloading", 5: "unavailable"}
_STATE_STYLES = {"resident": "green", "loading": "yellow", "unloading": "yellow"}


@app.command("list")
def list_models(worker: WorkerOpt = None, redis: RedisOpt = None) -> None:
    """Show every catalog model on each worker: state, leases, pin, memory and TTL."""
    targets = _targets(worker, redis, whole_fleet=True)
    results = _run(_gather(targets, lambda c: c.list_models()))
    rows: list[list[str | Text]] = []
    unavailable: list[str] = []
    for target, result in results:
        if isinstance(result, DuplexError):
            continue
        name = result.worker_name or target.name
        rows += [_model_row(m, name) for m in result.models]
        unavailable += [
            f"{m.id} on {name}: {m.unavailable_reason}" for m in result.models if m.state == 5
        ]
    if rows:
        console.print(_models_table(rows))
        console.print("* the worker's default model (always resident)", style="dim")
    for line in unavailable:
        console.print(f"unavailable: {line}", style="yellow")
    _exit_on_errors(results)


def _models_table(rows: list[list[str | Text]]) -> object:
    columns = ("MODEL", "FAMILY", "WORKER", "STATE", "REFS", "PINNED", "MEMORY", "UNTIL")
    # Short columns never fold; on a narrow terminal the ids fold instead of "not loaded".
    return table(*columns, rows=rows, no_wrap=columns[1:2] + columns[3:])


def _model_row(m: pb.ModelInfo, worker: str) -> list[str | Text]:
    state = _STATES.get(m.state, "?")
    memory = _human_bytes(m.memory_bytes if m.resident else m.estimated_memory_bytes)
    return [
        f"{m.id} *" if m.is_default else m.id,
        m.family,
        worker,
        Text(state, style=_STATE_STYLES.get(state, "dim" if state == "not loaded" else "red")),
        str(m.refcount),
        "yes" if m.pinned else "no",
        memory if m.resident else Text(f"~{memory}", style="dim"),
        _until(m),
    ]


def _until(m: pb.ModelInfo) -> str:
    """How long it stays resident: TTL countdown, "forever" (pinned/default) or "—"."""
    if not m.resident:
        return "—"
    if m.ttl_remaining_ms >= 0:
        return _duration(m.ttl_remaining_ms / 1000)
    return "forever" if m.pinned or m.is_default else "—"  # else: in use, no clock yet


@app.command()
def load(
    model: ModelArg,
    worker: WorkerOpt = None,
    pin: Annotated[bool, typer.Option("--pin", help="Also pin it (never evicted).")] = False,
    redis: RedisOpt = None,
) -> None:
    """Load and warm a model (evicting idle ones if memory is short)."""
    _each(
        _targets(worker, redis), [model], lambda c, m: c.load_model(m, pin=pin), _loaded, "loading"
    )


@app.command()
def preload(
    models: Annotated[str, typer.Argument(help="Comma-separated model ids: A,B,C.")],
    worker: WorkerOpt = None,
    redis: RedisOpt = None,
) -> None:
    """Load several models, one after the other."""
    ids = [m.strip() for m in models.split(",") if m.strip()]
    if not ids:
        fail(InvalidArgument("no model ids given", hint="e.g. `duplexctl models preload A,B`"))
    _each(_targets(worker, redis), ids, lambda c, m: c.load_model(m), _loaded, "loading")


@app.command()
def unload(
    model: ModelArg,
    worker: WorkerOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Also unload a pinned or default model.")
    ] = False,
    redis: RedisOpt = None,
) -> None:
    """Unload a resident model (refused while sessions use it)."""
    _each(
        _targets(worker, redis), [model], lambda c, m: c.unload_model(m, force=force), _unloaded, ""
    )


@app.command()
def pin(model: ModelArg, worker: WorkerOpt = None, redis: RedisOpt = None) -> None:
    """Pin a model: loaded if needed, then never evicted until unpinned."""
    _each(
        _targets(worker, redis), [model], lambda c, m: c.load_model(m, pin=True), _pinned, "pinning"
    )


@app.command()
def unpin(model: ModelArg, worker: WorkerOpt = None, redis: RedisOpt = None) -> None:
    """Clear a pin: the model follows the idle TTL and LRU eviction again."""
    _each(_targets(worker, redis), [model], lambda c, m: c.load_model(m, unpin=True), _unpinned, "")


# -- messages --------------------------------------------------------------------------------


def _loaded(model: str, where: str, resp: Any) -> str:
    if resp.already_resident:
        text = f"{model} is already resident on {where}"
    else:
        text = f"loaded {model} on {where} in {_ms(resp.load_ms)}"
    evicted = f" (evicted to make room: {', '.join(resp.evicted)})" if resp.evicted else ""
    return text + (" and pinned it" if resp.model.pinned else "") + evicted


def _pinned(model: str, where: str, resp: Any) -> str:
    loaded = "" if resp.already_resident else f" (loaded in {_ms(resp.load_ms)})"
    return f"pinned {model} on {where}{loaded}"


def _unpinned(model: str, where: str, resp: Any) -> str:
    return f"unpinned {model} on {where}; it now follows the idle TTL"


def _unloaded(model: str, where: str, resp: Any) -> str:
    freed = f" (freed {_human_bytes(resp.freed_bytes)})" if resp.freed_bytes else ""
    return f"unloaded {model} from {where}{freed}"


# -- plumbing --------------------------------------------------------------------------------


def _targets(
    selector: str | None, redis: str | None = None, *, whole_fleet: bool = False
) -> list[WorkerTarget]:
    """Local workers (or `selector`); with a registry, registered ones too (see module doc)."""
    from duplexctl.client.fleet import redis_url, registered_workers, resolve_workers
    from duplexd.fleet.keys import redact_url

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


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except DuplexError as exc:
        fail(exc)


async def _gather(
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


def _each(
    targets: Sequence[WorkerTarget],
    models: Sequence[str],
    call: Callable[[TTSClient, str], Awaitable[Any]],
    message: Callable[[str, str, Any], str],
    doing: str,
) -> None:
    """Run `call` for each model on each worker, in order; report each; exit on any error."""
    errors = _run(_each_async(targets, models, call, message, doing))
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


def _exit_on_errors(results: Sequence[tuple[WorkerTarget, object]]) -> None:
    errors = [(t, r) for t, r in results if isinstance(r, DuplexError)]
    for target, exc in errors:
        _print_error(exc, target, len(results))
    if errors:
        raise typer.Exit(errors[0][1].exit_code)


def _human_bytes(n: int) -> str:
    """Decimal units, like `ollama ps`: 118 MB, 1.2 GB."""
    if n <= 0:
        return "—"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 10 and unit == "GB" else f"{value:.0f} {unit}"
    return f"{n} B"


def _duration(seconds: float) -> str:
    """4m59s, 59s, 1h05m."""
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _ms(value: float) -> str:
    return f"{value / 1000:.1f} s" if value >= 1000 else f"{value:.0f} ms"
