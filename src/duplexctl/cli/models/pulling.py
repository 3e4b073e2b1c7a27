"""`duplexctl models pull`: fetch a model's weights onto this machine, with a progress bar."""

from __future__ import annotations

import re
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from duplexctl.cli._common import console, err_console, fail
from duplexctl.cli.models.options import ConfigOpt, ModelArg, local_catalog
from duplexctl.format import human_bytes
from duplexd.errors import DuplexError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from duplexctl.pull import PullProgress, PullResult
    from duplexd.tts.catalog import Catalog, ModelMeta

__all__ = ["pull"]


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
    from duplexctl.pull import parse_source
    from duplexctl.pull import pull as pull_model

    try:
        catalog, root = local_catalog(config, models_dir)
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
    return f"{human_bytes(result.size_bytes, empty='—')}, {files}"


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
            """Transfer speed for downloads (binary units, as every size the console shows);
            hashing and unpacking speeds mean little."""

            def render(self, task: Task) -> Text:
                if not task.fields.get("speed"):
                    return Text("")
                speed = task.finished_speed or task.speed
                shown = "?" if speed is None else f"{human_bytes(int(speed))}/s"
                return Text(shown, style="progress.data.speed")

        self.progress: Progress = Progress(
            TextColumn("{task.description:<16}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
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
                self.progress.console.print(f"resuming at {human_bytes(event.resumed_from)}")
            self.task = self.progress.add_task(
                _PHASE_LABELS.get(event.phase, event.phase),
                total=event.total,
                speed=event.phase == "download",
            )
            # a resumed download starts part-way: that part is no speed sample
            self.progress.reset(self.task, total=event.total, completed=event.done)
            return
        self.progress.update(self.task, completed=event.done, total=event.total)
