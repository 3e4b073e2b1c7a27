"""`duplexctl models list|pull|load|unload|pin|unpin|preload`: models and the workers' Managers.

`list` reads like `ollama ps`: what each worker has resident, how much memory it takes and
how long it stays (the idle TTL counting down, "forever" for pinned and default models).
Every other command is one RPC per model and worker; a refusal (unknown model, in use, no
room, busy) prints the worker's reason and exits with that error's code (see errors.py).

`pull` is local, like `ollama pull`: it fetches a catalog model's weights into the models dir
(duplexd.tts.pull) with a progress bar; `list` adds whether each model is pulled on this machine,
and when no worker answers it still shows the local catalog.

Without ``--worker`` a command goes to every worker `duplexctl up` started (else to
127.0.0.1:7001). With a fleet registry (``--redis URL`` or ``DUPLEX_REDIS_URL``) `list` shows
every registered worker too, and ``--worker NAME`` also finds workers registered there.
"""

# grpc loads inside the commands so `duplexctl --help` stays instant

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.text import Text

from duplexctl.cli._common import console, err_console, fail, table
from duplexd.errors import DuplexError, InvalidArgument

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from duplexctl.client.fleet import WorkerTarget
    from duplexd.rpc import tts_pb2 as pb
    from duplexd.rpc.client import TTSClient
    from duplexd.tts.catalog import Catalog, ModelMeta
    from duplexd.tts.pull import PullProgress, PullResult

__all__ = ["app"]

T = TypeVar("T")

app = typer.Typer(
    help="List, pull, load, unload and pin TTS models (pull: onto this machine).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    epilog="""\
[bold]Examples[/bold]

  duplexctl models list                          every model on every worker

  duplexctl models pull xtts-v2-en               download its weights (resumes if cut off)

  duplexctl models pull my-voice --from ./my-voice.tar.gz   from a local copy

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
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        metavar="FILE",
        exists=True,
        dir_okay=False,
        help="Worker config naming the catalog and models dir, as given to `duplexd worker "
        "--config` (default: built-in settings and DUPLEX_* variables, as the worker uses).",
    ),
]

_STATES = {1: "not loaded", 2: "loading", 3: "resident", 4: "unloading", 5: "unavailable"}
_STATE_STYLES = {"resident": "green", "loading": "yellow", "unloading": "yellow"}


@app.command("list")
def list_models(worker: WorkerOpt = None, redis: RedisOpt = None, config: ConfigOpt = None) -> None:
    """Show every catalog model on each worker: state, leases, pin, pulled, memory and TTL.

    PULLED says whether the model's files are on this machine (yes, no, package: they ship in
    a Python package, voicepack: beside its metadata, —: it needs none); ? for workers on
    other hosts. When no worker answers, the local catalog is listed before the error.
    """
    targets = _targets(worker, redis, whole_fleet=True)
    results = _run(_gather(targets, lambda c: c.list_models()))
    local = _local_states(config)
    rows: list[list[str | Text]] = []
    unavailable: list[str] = []
    for target, result in results:
        if isinstance(result, DuplexError):
            continue
        name = result.worker_name or target.name
        here = local if _is_loopback(target.addr) else {}
        rows += [_model_row(m, name, here.get(m.id, "?")) for m in result.models]
        unavailable += [
            f"{m.id} on {name}: {m.unavailable_reason}" for m in result.models if m.state == 5
        ]
    if rows:
        console.print(_models_table(rows))
        console.print("* the worker's default model (always resident)", style="dim")
    elif local:
        console.print(_local_table(config))
    for line in unavailable:
        console.print(f"unavailable: {line}", style="yellow")
    _exit_on_errors(results)


def _models_table(rows: list[list[str | Text]]) -> object:
    columns = ("MODEL", "FAMILY", "WORKER", "STATE", "REFS", "PINNED", "PULLED", "MEMORY", "UNTIL")
    # Short columns never fold; on a narrow terminal the ids fold instead of "not loaded".
    return table(*columns, rows=rows, no_wrap=columns[1:2] + columns[3:])


def _model_row(m: pb.ModelInfo, worker: str, pulled: str) -> list[str | Text]:
    state = _STATES.get(m.state, "?")
    memory = _human_bytes(m.memory_bytes if m.resident else m.estimated_memory_bytes)
    name = f"{m.id} *" if m.is_default else m.id
    if m.base_model:
        name += f" (LoRA on {m.base_model})"
    if m.adapters:
        name += f" (+ LoRA {', '.join(m.adapters)})"
    return [
        name,
        m.family,
        worker,
        Text(state, style=_STATE_STYLES.get(state, "dim" if state == "not loaded" else "red")),
        str(m.refcount),
        "yes" if m.pinned else "no",
        _pulled_cell(pulled),
        memory if m.resident else Text(f"~{memory}", style="dim"),
        _until(m),
    ]


def _pulled_cell(pulled: str) -> Text:
    return Text(pulled, style={"yes": "green", "no": "yellow", "?": "dim"}.get(pulled, ""))


_PULLED_LABELS = {"yes": "yes", "no": "no", "package": "package", "voicepack": "voicepack"}


def _local_states(config: Path | None) -> dict[str, str]:
    """model id -> PULLED cell for this machine's catalog; {} (shown as ?) if it cannot be read:
    a console with no checkout may drive remote workers (`duplexctl doctor` names the problem)."""
    from duplexd.tts.pull import pull_status

    try:
        catalog, root = _local_catalog(config, None)
    except DuplexError:
        return {}
    return {m.model_id: _PULLED_LABELS.get(pull_status(m, root), "—") for m in catalog}


def _local_table(config: Path | None) -> object:
    """The catalog on this machine, for when no worker answers `list`."""
    from duplexd.tts.pull import pull_status

    catalog, root = _local_catalog(config, None)
    rows: list[list[str | Text]] = [
        [
            m.model_id,
            m.family,
            _pulled_cell(_PULLED_LABELS.get(pull_status(m, root), "—")),
            Text(f"~{_human_bytes(m.estimated_memory_bytes)}", style="dim"),
            m.source or "—",
        ]
        for m in catalog
    ]
    columns = ("MODEL", "FAMILY", "PULLED", "MEMORY", "SOURCE")
    return table(
        *columns,
        rows=rows,
        title=f"no worker answered; the catalog on this machine (models: {root})",
        no_wrap=columns[1:4],
    )


def _is_loopback(addr: str) -> bool:
    host = addr.rpartition(":")[0].strip("[]") or addr
    return host in ("localhost", "::1") or host.startswith("127.")


def _until(m: pb.ModelInfo) -> str:
    """How long it stays resident: TTL countdown, "forever" (pinned/default) or "—"."""
    if not m.resident:
        return "—"
    if m.ttl_remaining_ms >= 0:
        return _duration(m.ttl_remaining_ms / 1000)
    return "forever" if m.pinned or m.is_default else "—"  # else: in use, no clock yet


@app.command()
def pull(
    model: ModelArg,
    from_: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="URL|PATH",
            help="Pull from here instead of the catalog's source: an https:// or file:// URL, "
            "an archive, file or folder on this machine, or a Hugging Face repo id.",
        ),
    ] = None,
    sha256: Annotated[
        str | None,
        typer.Option(
            "--sha256", metavar="HEX", help="Expected SHA-256 of the archive (not the catalog's)."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Pull again and replace the copy already there.")
    ] = False,
    models_dir: Annotated[
        Path | None,
        typer.Option(
            "--models-dir",
            metavar="DIR",
            help="Where models live (default: model_manager.models_dir, DUPLEX_MODELS_DIR, "
            "else the per-user data dir).",
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Download a model's weights into the models dir (like `ollama pull`).

    The catalog entry's `source` is an https:// archive (.tar.gz, .zip, or a single file), a
    file:// URL or a Hugging Face repo id. An interrupted download resumes where it stopped;
    the archive's SHA-256 is checked when the catalog gives one. The model folder appears only
    once complete, so a worker never sees half a model.

    [bold]Examples[/bold]

      duplexctl models pull xtts-v2-en

      duplexctl models pull xtts-v2-en --from ~/Downloads/xtts-v2.tar.gz   offline: a copy

      duplexctl models pull my-voice --from https://host/my-voice.zip --sha256 HEX

      duplexctl models pull xtts-v2-en --force      replace the copy already there
    """
    from duplexd.tts.pull import parse_source
    from duplexd.tts.pull import pull as pull_model

    try:
        catalog, root = _local_catalog(config, models_dir)
        meta = catalog.get(model)
        shown = str(parse_source(from_)) if from_ else meta.source
    except DuplexError as exc:
        fail(exc)
    base = catalog.get(meta.base_model) if meta.base_model and meta.base_model in catalog else None
    if shown:
        err_console.print(Text(f"pulling {model} from {shown}"))
    try:
        with _PullBar() as bar:
            result = pull_model(
                meta,
                root,
                source_override=from_,
                sha256=sha256,
                progress=bar,
                force=force,
                base_meta=base,
            )
    except DuplexError as exc:
        fail(exc)
    except KeyboardInterrupt:
        fail(
            DuplexError(
                f"interrupted; the {model} folder was not changed",
                hint="run the same command again: a download resumes where it stopped",
            ),
            code=130,
        )
    except OSError as exc:
        fail(
            DuplexError(
                f"cannot write {model} under {root}: {exc}",
                hint="check free space and permissions (or pass --models-dir); "
                "the model folder was not changed",
            )
        )
    _report_pull(meta, result, catalog)


def _local_catalog(config: Path | None, models_dir: Path | None) -> tuple[Catalog, Path]:
    """This machine's catalog and models dir, resolved as `duplexd worker` resolves them."""
    from duplexd.config import WorkerConfig, load_config, resolve_path
    from duplexd.tts.catalog import Catalog

    mm = load_config(WorkerConfig, config).model_manager
    root = (models_dir or mm.effective_models_dir).expanduser().absolute()
    catalog = Catalog.load(
        resolve_path(mm.catalog, config), resolve_path(mm.voicepacks_dir, config), root
    )
    return catalog, root


def _report_pull(meta: ModelMeta, result: PullResult, catalog: Catalog) -> None:
    model = meta.model_id
    if result.package:
        console.print(
            f"{model}: its weights ship in the Python package {result.package}, "
            "which is installed: nothing to pull"
        )
    elif result.already_present:
        console.print(
            f"{model} is already pulled: {result.path} ({_files(result)}); --force pulls it again"
        )
    else:
        replaced = ", replacing the previous copy" if result.replaced else ""
        console.print(f"pulled {model} into {result.path} ({_files(result)}{replaced})")
        if result.sha256:
            checked = "verified" if result.verified else "(no checksum given to check it against)"
            console.print(Text(f"sha256 {result.sha256} {checked}", style="dim"))
    for note in result.notes:
        console.print(Text(f"note: {note}", style="yellow"))
    missing = _missing_extra(meta.extra) if meta.extra else []
    if missing:
        console.print(
            f"next: install its engine (missing: {', '.join(missing)}): "
            f"uv sync --extra {meta.extra}  (or pip install 'duplex[{meta.extra}]'), "
            f"then duplexctl models load {model}"
        )
    elif meta.base_model and meta.base_model in catalog:
        console.print(f"next: duplexctl models load {model}  (attaches to {meta.base_model})")
    else:
        console.print(f"next: duplexctl models load {model}")


def _files(result: PullResult) -> str:
    files = f"{result.files} file" + ("" if result.files == 1 else "s")
    return f"{_human_bytes(result.size_bytes)}, {files}"


def _missing_extra(extra: str) -> list[str]:
    """The distributions of duplex's `extra` that are not installed (from our own metadata)."""
    from importlib.metadata import PackageNotFoundError, distribution, requires

    try:
        requirements = requires("duplex") or []
    except PackageNotFoundError:
        return []
    names = []
    for req in requirements:
        spec, _, marker = req.partition(";")
        if re.search(rf"""extra\s*==\s*["']{re.escape(extra)}["']""", marker):
            name = re.split(r"[\s\[<>=!~(]", spec.strip(), maxsplit=1)[0]
            if name and name != "duplex":
                names.append(name)
    missing = []
    for name in names:
        try:
            distribution(name)
        except PackageNotFoundError:
            missing.append(name)
    return missing


_PHASE_LABELS = {
    "download": "downloading",
    "verify": "sha256",
    "extract": "extracting",
    "copy": "copying",
}


class _PullBar:
    """A Rich progress bar per phase (bytes, speed, ETA) on stderr; the pull's callback."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            Task,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        class SpeedColumn(TransferSpeedColumn):
            """Transfer speed for downloads; hashing and unpacking speeds mean little."""

            def render(self, task: Task) -> Text:
                return super().render(task) if task.fields.get("speed") else Text("")

        self.progress: Progress = Progress(
            TextColumn("{task.description:<16}"),
            BarColumn(),
            DownloadColumn(),
            SpeedColumn(),
            TimeRemainingColumn(),
            console=err_console,
        )
        self.task: TaskID | None = None
        self.phase: str | None = None

    def __enter__(self) -> _PullBar:
        return self  # the display starts with the first report: none, no blank line

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.task is not None:
            self.progress.stop()

    def __call__(self, event: PullProgress) -> None:
        if self.task is None:
            self.progress.start()
        if event.phase != self.phase or self.task is None:
            if self.task is not None:  # the finished phase stays on screen, full
                self.progress.update(self.task, total=self.progress.tasks[-1].completed)
            self.phase = event.phase
            if event.resumed_from:
                self.progress.console.print(f"resuming at {event.resumed_from / 1e6:.1f} MB")
            self.task = self.progress.add_task(
                _PHASE_LABELS.get(event.phase, event.phase),
                total=event.total,
                speed=event.phase == "download",
            )
            # a resumed download starts part-way: that part is no speed sample
            self.progress.reset(self.task, total=event.total, completed=event.done)
            return
        self.progress.update(self.task, completed=event.done, total=event.total)


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
