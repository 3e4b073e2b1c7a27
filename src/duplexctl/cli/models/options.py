"""The options the `duplexctl models` commands share, and this machine's catalog."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from duplexd.tts.catalog import Catalog

__all__ = ["ConfigOpt", "ModelArg", "RedisOpt", "WorkerOpt", "local_catalog"]

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


def local_catalog(config: Path | None, models_dir: Path | None) -> tuple[Catalog, Path]:
    """This machine's catalog and models dir, resolved as `duplexd worker` resolves them."""
    from duplexd.config import WorkerConfig, load_config, resolve_path
    from duplexd.tts.catalog import Catalog

    mm = load_config(WorkerConfig, config).model_manager
    root = (models_dir or mm.effective_models_dir).expanduser().absolute()
    catalog = Catalog.load(
        resolve_path(mm.catalog, config), resolve_path(mm.voicepacks_dir, config), root
    )
    return catalog, root
