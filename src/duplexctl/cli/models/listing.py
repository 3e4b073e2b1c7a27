"""`duplexctl models list`: every catalog model on each worker, or the local catalog."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text

from duplexctl.cli.models.options import ConfigOpt, RedisOpt, WorkerOpt, local_catalog
from duplexctl.cli.models.workers import exit_on_errors, gather, run, worker_targets
from duplexctl.cli.tables import Column, Listing, Output, OutputOpt, emit, note, print_json
from duplexctl.format import duration, human_bytes
from duplexctl.modelstate import fix_for, short_reason, state_style, state_word
from duplexd.errors import DuplexError

if TYPE_CHECKING:
    from duplexctl.client.fleet import WorkerTarget
    from duplexd.rpc import tts_pb2 as pb

__all__ = ["list_models"]

# ModelInfo.state (ModelState) -> its name; 0 is a worker that predates the field
_ENUM = {0: "not_loaded", 1: "not_loaded", 2: "loading", 3: "resident", 4: "unloading",
         5: "unavailable"}  # fmt: skip


def list_models(
    worker: WorkerOpt = None,
    redis: RedisOpt = None,
    config: ConfigOpt = None,
    output: OutputOpt = Output.TABLE,
) -> None:
    """Show every catalog model on each worker: state, leases, pin, memory and how long it stays.

    STATE is the worker's word: resident, loading, not loaded, or why it cannot load there:
    not pulled (`duplexctl models pull ID`), needs extra X, needs F env, unavailable. UNTIL
    counts the idle TTL down ("forever": pinned or the default). `-o wide` adds PULLED (this
    machine's files: yes, no, package, voicepack, —; ? for workers on other hosts), DEVICE and
    each model's full reason; `-o json` gives the same as records (docs/cli.md). On a narrow
    terminal the least useful columns give way; piped, the table is plain columns.

    When no worker answers, the local catalog is listed before the error.
    """
    targets = worker_targets(worker, redis, whole_fleet=True)
    results = run(gather(targets, lambda c: c.list_models()))
    local = _local_states(config)
    listed: list[tuple[WorkerTarget, str, pb.ModelInfo]] = []
    for target, result in results:
        if isinstance(result, DuplexError):
            continue
        name = result.worker_name or target.name
        listed += [(target, name, m) for m in result.models]
    pulled = {id(m): (local if _is_loopback(t.addr) else {}).get(m.id, "?") for t, _, m in listed}
    if output is Output.JSON:
        records = [_record(t, name, m, pulled[id(m)]) for t, name, m in listed]
        if not listed and local:
            records = _local_records(config)
        print_json({"models": records, "errors": _errors(results)})
    elif listed:
        workers = {name for _, name, _ in listed}
        emit(_models_table(listed, pulled, wide=output is Output.WIDE, one_worker=len(workers) < 2))
        _notes(listed, wide=output is Output.WIDE)
    elif local:
        emit(_local_table(config))
    exit_on_errors(results, quiet=output is Output.JSON)


def _models_table(
    listed: list[tuple[WorkerTarget, str, pb.ModelInfo]],
    pulled: dict[int, str],
    *,
    wide: bool,
    one_worker: bool,
) -> Listing:
    lora = any(m.base_model or m.adapters for _, _, m in listed)
    columns = [
        Column("MODEL"),
        Column("FAMILY", drop=3),
        Column("WORKER", drop=6 if one_worker else 2),
        Column("STATE"),
        Column("REFS", drop=5, justify="right"),
        Column("PINNED", drop=4),
        Column("MEMORY", drop=1, justify="right"),
        Column("UNTIL", drop=1),
        *([Column("LORA", drop=7)] if lora else []),
        Column("PULLED", wide=True),
        Column("DEVICE", wide=True),
    ]
    rows = [_model_row(m, name, pulled[id(m)], lora) for _, name, m in listed]
    return Listing(columns, rows, wide=wide)


def _model_row(m: pb.ModelInfo, worker: str, pulled: str, lora: bool) -> list[str | Text]:
    word = _word(m)
    memory = human_bytes(m.memory_bytes if m.resident else m.estimated_memory_bytes, empty="—")
    row: list[str | Text] = [
        f"{m.id} *" if m.is_default else m.id,
        m.family,
        worker,
        Text(word, style=state_style(word)),
        str(m.refcount),
        "yes" if m.pinned else "no",
        memory if m.resident else Text(f"~{memory}", style="dim"),
        _until(m),
    ]
    if lora:
        row.append(_lora(m))
    return [*row, _pulled_cell(pulled), m.device or "—"]


def _word(m: pb.ModelInfo) -> str:
    return state_word(m.status, _ENUM.get(m.state, "not_loaded"))


def _lora(m: pb.ModelInfo) -> str:
    if m.base_model:
        return f"on {m.base_model}"
    return f"+ {', '.join(m.adapters)}" if m.adapters else ""


def _notes(listed: list[tuple[WorkerTarget, str, pb.ModelInfo]], *, wide: bool) -> None:
    """Under the table, once each: the default mark, what to run for each kind of STATE, and
    why an unavailable model is (its first clause; -o wide: all of it)."""
    if any(m.is_default for _, _, m in listed):
        note("* the worker's default model (always resident)")
    fixes = dict.fromkeys(fix for _, _, m in listed if (fix := fix_for(_word(m))))
    for fix in fixes:
        note(fix)
    reasons: dict[str, str] = {}
    for _, _, m in listed:
        if _word(m) == "unavailable" and m.unavailable_reason:
            reasons.setdefault(m.id, m.unavailable_reason)
    for model_id, reason in reasons.items():
        note(f"unavailable: {model_id}, {reason if wide else short_reason(reason)}", style="yellow")


def _record(target: WorkerTarget, worker: str, m: pb.ModelInfo, pulled: str) -> dict[str, Any]:
    """One model on one worker for `-o json` (keys documented in docs/cli.md)."""
    return {
        "id": m.id,
        "family": m.family,
        "worker": worker,
        "worker_addr": target.addr,
        "state": _word(m),
        "resident": m.resident,
        "default": m.is_default,
        "pinned": m.pinned,
        "refs": m.refcount,
        "memory_bytes": m.memory_bytes if m.resident else None,
        "estimated_memory_bytes": m.estimated_memory_bytes,
        "ttl_remaining_s": m.ttl_remaining_ms / 1000 if m.resident and m.ttl_remaining_ms >= 0
        else None,
        "device": m.device or None,
        "base_model": m.base_model or None,
        "adapters": list(m.adapters),
        "pulled": None if pulled == "?" else pulled,
        "reason": m.unavailable_reason or None,
    }  # fmt: skip


def _errors(results: Sequence[tuple[WorkerTarget, object]]) -> list[dict[str, Any]]:
    return [
        {"worker": t.name, "worker_addr": t.addr, "error": r.message, "exit_code": r.exit_code}
        for t, r in results
        if isinstance(r, DuplexError)
    ]


def _pulled_cell(pulled: str) -> Text:
    """yes, no, package, voicepack, — (needs no files: `none`), ? (another host's worker)."""
    shown = "—" if pulled == "none" else pulled
    return Text(shown, style={"yes": "green", "no": "yellow", "?": "dim"}.get(pulled, ""))


def _local_states(config: Path | None) -> dict[str, str]:
    """model id -> its `pull_status` on this machine; {} (shown as ?) if the catalog cannot be
    read: a console with no checkout may drive remote workers (`duplexctl doctor` says why)."""
    from duplexctl.pull import pull_status

    try:
        catalog, root = local_catalog(config, None)
    except DuplexError:
        return {}
    return {m.model_id: pull_status(m, root) for m in catalog}


def _local_table(config: Path | None) -> Listing:
    """The catalog on this machine, for when no worker answers `list`."""
    from duplexctl.pull import pull_status

    catalog, root = local_catalog(config, None)
    rows: list[list[str | Text]] = [
        [
            m.model_id,
            m.family,
            _pulled_cell(pull_status(m, root)),
            Text(f"~{human_bytes(m.estimated_memory_bytes, empty='—')}", style="dim"),
            m.source or "—",
        ]
        for m in catalog
    ]
    columns = [
        Column("MODEL"),
        Column("FAMILY", drop=2),
        Column("PULLED"),
        Column("MEMORY", drop=1, justify="right"),
        Column("SOURCE", drop=3),
    ]
    title = f"no worker answered; the catalog on this machine (models: {root})"
    return Listing(columns, rows, title=title)


def _local_records(config: Path | None) -> list[dict[str, Any]]:
    from duplexctl.pull import pull_status

    catalog, root = local_catalog(config, None)
    return [
        {
            "id": m.model_id,
            "family": m.family,
            "worker": None,
            "worker_addr": None,
            "pulled": pull_status(m, root),
            "estimated_memory_bytes": m.estimated_memory_bytes,
            "source": m.source,
        }
        for m in catalog
    ]


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
