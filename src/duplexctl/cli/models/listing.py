"""`duplexctl models list`: every catalog model on each worker, or the local catalog."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text

from duplexctl.cli._common import console, table
from duplexctl.cli.models.options import ConfigOpt, RedisOpt, WorkerOpt, local_catalog
from duplexctl.cli.models.workers import exit_on_errors, gather, run, worker_targets
from duplexctl.format import duration, human_bytes
from duplexd.errors import DuplexError

if TYPE_CHECKING:
    from duplexd.rpc import tts_pb2 as pb

__all__ = ["list_models"]

_STATES = {1: "not loaded", 2: "loading", 3: "resident", 4: "unloading", 5: "unavailable"}
_STATE_STYLES = {"resident": "green", "loading": "yellow", "unloading": "yellow"}
_PULLED_LABELS = {"yes": "yes", "no": "no", "package": "package", "voicepack": "voicepack"}


def list_models(worker: WorkerOpt = None, redis: RedisOpt = None, config: ConfigOpt = None) -> None:
    """Show every catalog model on each worker: state, leases, pin, pulled, memory and TTL.

    PULLED says whether the model's files are on this machine (yes, no, package: they ship in
    a Python package, voicepack: beside its metadata, —: it needs none); ? for workers on
    other hosts. When no worker answers, the local catalog is listed before the error.
    """
    targets = worker_targets(worker, redis, whole_fleet=True)
    results = run(gather(targets, lambda c: c.list_models()))
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
    exit_on_errors(results)


def _models_table(rows: list[list[str | Text]]) -> object:
    columns = ("MODEL", "FAMILY", "WORKER", "STATE", "REFS", "PINNED", "PULLED", "MEMORY", "UNTIL")
    # Short columns never fold; on a narrow terminal the ids fold instead of "not loaded".
    return table(*columns, rows=rows, no_wrap=columns[1:2] + columns[3:])


def _model_row(m: pb.ModelInfo, worker: str, pulled: str) -> list[str | Text]:
    state = _STATES.get(m.state, "?")
    memory = human_bytes(m.memory_bytes if m.resident else m.estimated_memory_bytes, empty="—")
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


def _local_states(config: Path | None) -> dict[str, str]:
    """model id -> PULLED cell for this machine's catalog; {} (shown as ?) if it cannot be read:
    a console with no checkout may drive remote workers (`duplexctl doctor` names the problem)."""
    from duplexctl.pull import pull_status

    try:
        catalog, root = local_catalog(config, None)
    except DuplexError:
        return {}
    return {m.model_id: _PULLED_LABELS.get(pull_status(m, root), "—") for m in catalog}


def _local_table(config: Path | None) -> object:
    """The catalog on this machine, for when no worker answers `list`."""
    from duplexctl.pull import pull_status

    catalog, root = local_catalog(config, None)
    rows: list[list[str | Text]] = [
        [
            m.model_id,
            m.family,
            _pulled_cell(_PULLED_LABELS.get(pull_status(m, root), "—")),
            Text(f"~{human_bytes(m.estimated_memory_bytes, empty='—')}", style="dim"),
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
        return duration(m.ttl_remaining_ms / 1000)
    return "forever" if m.pinned or m.is_default else "—"  # else: in use, no clock yet
