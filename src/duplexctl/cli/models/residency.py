"""`duplexctl models load|preload|unload|pin|unpin`: one RPC per model and worker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from duplexctl.cli._common import fail
from duplexctl.cli.models.options import ModelArg, RedisOpt, WorkerOpt
from duplexctl.cli.models.workers import each, worker_targets
from duplexctl.cli.tables import Output, OutputOpt
from duplexctl.format import human_bytes
from duplexctl.modelstate import state_word
from duplexd.errors import InvalidArgument

if TYPE_CHECKING:
    from duplexctl.client.fleet import WorkerTarget

__all__ = ["load", "pin", "preload", "unload", "unpin"]


def load(
    model: ModelArg,
    worker: WorkerOpt = None,
    pin: Annotated[bool, typer.Option("--pin", help="Also pin it (never evicted).")] = False,
    redis: RedisOpt = None,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Load and warm a model (evicting idle ones if memory or resident_cap is short).

    A load that cannot happen (weights not pulled, engine not installed) is refused with that
    cause before anything is evicted. `-o json`: {"results": [...]}, see docs/cli.md.
    """
    each(
        worker_targets(worker, redis),
        [model],
        lambda c, m: c.load_model(m, pin=pin),
        _loaded,
        "loading",
        record=_load_record,
        output=output,
    )


def preload(
    models: Annotated[str, typer.Argument(help="Comma-separated model ids: A,B,C.")],
    worker: WorkerOpt = None,
    redis: RedisOpt = None,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Load several models, one after the other."""
    ids = [m.strip() for m in models.split(",") if m.strip()]
    if not ids:
        fail(InvalidArgument("no model ids given", hint="e.g. `duplexctl models preload A,B`"))
    each(
        worker_targets(worker, redis),
        ids,
        lambda c, m: c.load_model(m),
        _loaded,
        "loading",
        record=_load_record,
        output=output,
    )


def unload(
    model: ModelArg,
    worker: WorkerOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Also unload a pinned or default model.")
    ] = False,
    redis: RedisOpt = None,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Unload a resident model (refused while sessions use it)."""
    each(
        worker_targets(worker, redis),
        [model],
        lambda c, m: c.unload_model(m, force=force),
        _unloaded,
        "",
        record=_unload_record,
        output=output,
    )


def pin(
    model: ModelArg,
    worker: WorkerOpt = None,
    redis: RedisOpt = None,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Pin a model: loaded if needed, then never evicted until unpinned."""
    each(
        worker_targets(worker, redis),
        [model],
        lambda c, m: c.load_model(m, pin=True),
        _pinned,
        "pinning",
        record=_load_record,
        output=output,
    )


def unpin(
    model: ModelArg,
    worker: WorkerOpt = None,
    redis: RedisOpt = None,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Clear a pin: the model follows the idle TTL and LRU eviction again."""
    each(
        worker_targets(worker, redis),
        [model],
        lambda c, m: c.load_model(m, unpin=True),
        _unpinned,
        "",
        record=_load_record,
        output=output,
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


def _where(model: str, target: WorkerTarget) -> dict[str, Any]:
    return {"model": model, "worker": target.name, "worker_addr": target.addr}


def _load_record(model: str, target: WorkerTarget, resp: Any) -> dict[str, Any]:
    """load, preload, pin, unpin with `-o json` (docs/cli.md)."""
    return {
        **_where(model, target),
        "already_resident": resp.already_resident,
        "load_ms": round(resp.load_ms, 1),
        "evicted": list(resp.evicted),
        "pinned": resp.model.pinned,
        "state": state_word(resp.model.status, "resident" if resp.model.resident else ""),
        "memory_bytes": resp.model.memory_bytes,
    }


def _unload_record(model: str, target: WorkerTarget, resp: Any) -> dict[str, Any]:
    return {**_where(model, target), "freed_bytes": resp.freed_bytes}


def _ms(value: float) -> str:
    return f"{value / 1000:.1f} s" if value >= 1000 else f"{value:.0f} ms"
