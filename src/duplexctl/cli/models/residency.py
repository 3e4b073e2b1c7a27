"""`duplexctl models load|preload|unload|pin|unpin`: one RPC per model and worker."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from duplexctl.cli._common import fail
from duplexctl.cli.models.options import ModelArg, RedisOpt, WorkerOpt
from duplexctl.cli.models.workers import each, worker_targets
from duplexctl.format import human_bytes
from duplexd.errors import InvalidArgument

__all__ = ["load", "pin", "preload", "unload", "unpin"]


def load(
    model: ModelArg,
    worker: WorkerOpt = None,
    pin: Annotated[bool, typer.Option("--pin", help="Also pin it (never evicted).")] = False,
    redis: RedisOpt = None,
) -> None:
    """Load and warm a model (evicting idle ones if memory is short)."""
    each(
        worker_targets(worker, redis),
        [model],
        lambda c, m: c.load_model(m, pin=pin),
        _loaded,
        "loading",
    )


def preload(
    models: Annotated[str, typer.Argument(help="Comma-separated model ids: A,B,C.")],
    worker: WorkerOpt = None,
    redis: RedisOpt = None,
) -> None:
    """Load several models, one after the other."""
    ids = [m.strip() for m in models.split(",") if m.strip()]
    if not ids:
        fail(InvalidArgument("no model ids given", hint="e.g. `duplexctl models preload A,B`"))
    each(worker_targets(worker, redis), ids, lambda c, m: c.load_model(m), _loaded, "loading")


def unload(
    model: ModelArg,
    worker: WorkerOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Also unload a pinned or default model.")
    ] = False,
    redis: RedisOpt = None,
) -> None:
    """Unload a resident model (refused while sessions use it)."""
    each(
        worker_targets(worker, redis),
        [model],
        lambda c, m: c.unload_model(m, force=force),
        _unloaded,
        "",
    )


def pin(model: ModelArg, worker: WorkerOpt = None, redis: RedisOpt = None) -> None:
    """Pin a model: loaded if needed, then never evicted until unpinned."""
    each(
        worker_targets(worker, redis),
        [model],
        lambda c, m: c.load_model(m, pin=True),
        _pinned,
        "pinning",
    )


def unpin(model: ModelArg, worker: WorkerOpt = None, redis: RedisOpt = None) -> None:
    """Clear a pin: the model follows the idle TTL and LRU eviction again."""
    each(
        worker_targets(worker, redis),
        [model],
        lambda c, m: c.load_model(m, unpin=True),
        _unpinned,
        "",
    )


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
    freed = f" (freed {human_bytes(resp.freed_bytes)})" if resp.freed_bytes else ""
    return f"unloaded {model} from {where}{freed}"


def _ms(value: float) -> str:
    return f"{value / 1000:.1f} s" if value >= 1000 else f"{value:.0f} ms"
