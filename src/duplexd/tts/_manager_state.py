"""The Model Manager's bookkeeping: one `Entry` per model, the eviction `Policy`, the refusals
(with the messages operators read), the task and listener sets, and the public value types
(`ModelStatus`, `LoadResult`, `Lease`).

Kept apart from `manager.py` so the rules about *which* model may go (pure functions of the
entries and a time) read without the async machinery that makes it go. Import the public names
from `duplexd.tts.manager`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from duplexd.config import ModelManagerConfig
from duplexd.errors import (
    BusyError,
    DuplexError,
    FailedPrecondition,
    ModelInUse,
    ResourceExhausted,
)
from duplexd.tts.catalog import Catalog, ModelMeta

_MIB = 2**20
T = TypeVar("T")

ModelState = Literal["not_loaded", "loading", "resident", "unloading", "unavailable"]


class ModelHandle(Protocol):
    """A loaded model (the real ones are TTS adapters)."""

    @property
    def memory_bytes(self) -> int:
        """Measured after load (RSS or VRAM delta): what unloading gives back."""
        ...

    def close(self) -> None:
        """Blocking: free the engine's memory."""
        ...


LoadFn = Callable[[ModelMeta], ModelHandle]
"""Blocking: loads AND warms up a model; the manager runs it off the event loop."""

AttachFn = Callable[[ModelHandle, ModelMeta], ModelHandle]
"""Blocking: attaches a LoRA voice to its resident base's handle and warms it up; the handle
it returns serves the voice's sessions and its `close()` detaches only that adapter."""

DeviceFn = Callable[[ModelMeta], str]
"""Blocking: the concrete device (`cpu`, `cuda:N`) a model will load on; may raise."""


class RunBlocking(Protocol):
    """Runs a blocking call off the event loop (``asyncio.to_thread`` in production)."""

    def __call__(self, fn: Callable[[], T], /) -> Awaitable[T]: ...


@dataclass(frozen=True)
class ModelStatus:
    """One row of ListModels."""

    model_id: str
    family: str
    state: ModelState
    pinned: bool
    is_default: bool
    refcount: int
    last_used_unix: float | None
    # None: not subject to TTL now (not resident, in use, pinned, default)
    ttl_remaining_ms: int | None
    memory_bytes: int  # measured when resident, else the catalog estimate
    estimated_memory_bytes: int
    load_ms: float | None
    loaded_unix: float | None
    device: str
    tags: tuple[str, ...]
    languages: tuple[str, ...]
    native_sr: int
    unavailable_reason: str | None
    base_model: str | None = None  # a LoRA voice: the base it attaches to
    adapters: tuple[str, ...] = ()  # a base: the LoRA voices attached now


@dataclass(frozen=True)
class LoadResult:
    status: ModelStatus
    already_resident: bool
    load_ms: float
    evicted: list[str]


@dataclass(frozen=True)
class LoadOutcome:
    """What one load_fn run produced, shared by every caller that coalesced onto it."""

    load_ms: float
    evicted: tuple[str, ...]


@dataclass(eq=False)
class Entry:
    """Everything the manager knows about one model. Times from `clock` are seconds."""

    meta: ModelMeta
    state: ModelState = "not_loaded"
    handle: ModelHandle | None = None
    refcount: int = 0
    # Callers between "make it resident" and "take the lease": evicting then would pull the
    # model out from under them, so they count as users.
    holds: int = 0
    pinned: bool = False
    dropped: bool = False  # gone from the catalog after a RELOAD; unloaded once idle
    loaded_at: float | None = None
    loaded_unix: float | None = None
    last_used: float | None = None
    last_used_unix: float | None = None
    load_ms: float | None = None
    error: str | None = None
    load_running: bool = False  # holds a load slot (counts against the cap and memory)
    loading: asyncio.Task[LoadOutcome] | None = None
    closing: asyncio.Task[int] | None = None
    device: str | None = None  # resolved when a load starts
    # a base: its LoRA voices resident or attaching; they keep it resident
    attached: set[str] = field(default_factory=set)

    @property
    def model_id(self) -> str:
        return self.meta.model_id

    @property
    def users(self) -> int:
        return self.refcount + self.holds

    def mark_resident(self, handle: ModelHandle, load_ms: float, now: float, wall: float) -> None:
        self.handle, self.state, self.load_ms, self.error = handle, "resident", load_ms, None
        self.loaded_at = self.last_used = now
        self.loaded_unix = self.last_used_unix = wall

    def forget_handle(self) -> None:
        self.handle, self.state, self.closing, self.pinned = None, "not_loaded", None, False
        self.loaded_at = self.loaded_unix = self.load_ms = None


def new_entry(meta: ModelMeta) -> Entry:
    """An entry for a catalog model; one the catalog marks unavailable stays so, with why."""
    entry = Entry(meta)
    if meta.unavailable:
        entry.state, entry.error = "unavailable", meta.unavailable
    return entry


def estimate_bytes(meta: ModelMeta, device: str) -> int:
    """The catalog's memory estimate for `device` (VRAM on CUDA, RAM otherwise)."""
    if device.startswith("cuda"):
        return int(meta.estimated_vram_gb * 2**30)
    return meta.estimated_memory_bytes


@dataclass(frozen=True)
class Policy:
    """Which resident models may be unloaded, and when. Times are `clock` seconds."""

    default_id: str
    ttl_s: float
    min_residency_s: float

    def kept_because(self, e: Entry) -> str | None:
        """Why `e` must stay whatever the clock says; None if it may go once idle long enough."""
        if e.state != "resident":
            return e.state
        if e.users:
            return f"in use by {e.users} lease(s)"
        if e.attached:
            return "LoRA voices attached: " + ", ".join(sorted(e.attached))
        if e.dropped:
            return None  # removed from the catalog: pin and default no longer protect it
        return self._protected(e)

    def _protected(self, e: Entry) -> str | None:
        if e.pinned:
            return "pinned"
        if e.model_id == self.default_id:
            return "default model"
        return None

    def idle_s(self, e: Entry, now: float) -> float:
        return now - (e.last_used if e.last_used is not None else now)

    def residency_s(self, e: Entry, now: float) -> float:
        return now - (e.loaded_at if e.loaded_at is not None else now)

    def expired(self, e: Entry, now: float) -> bool:
        """The evictor's rule: idle past the TTL and resident past the minimum residency."""
        if self.kept_because(e) is not None:
            return False
        if e.dropped:
            return True
        return self.idle_s(e, now) > self.ttl_s and self.residency_s(e, now) > self.min_residency_s

    def ttl_remaining_ms(self, e: Entry, now: float) -> int | None:
        if self.kept_because(e) is not None:
            return None
        if e.dropped:
            return 0
        ttl_left = self.ttl_s - self.idle_s(e, now)
        residency_left = self.min_residency_s - self.residency_s(e, now)
        return max(round(max(ttl_left, residency_left) * 1000), 0)

    def lru_victim(
        self, entries: Iterable[Entry], now: float, *, honour_min_residency: bool
    ) -> Entry | None:
        """The idle model to unload first: dropped ones, then least recently used."""
        candidates = [
            e
            for e in entries
            if self.kept_because(e) is None
            and (
                not honour_min_residency
                or e.dropped
                or self.residency_s(e, now) >= self.min_residency_s
            )
        ]
        return min(candidates, key=lambda e: (not e.dropped, e.last_used or 0.0), default=None)

    def why_kept(self, e: Entry, now: float) -> str:
        """For refusals: one reason per model the cap cannot evict."""
        reason = self.kept_because(e)
        if reason is not None:
            return reason
        return (
            f"loaded {self.residency_s(e, now):.1f} s ago, "
            f"min_residency {self.min_residency_s:.0f} s"
        )


def build_status(e: Entry, policy: Policy, now: float, device: str) -> ModelStatus:
    meta = e.meta
    estimate = estimate_bytes(meta, device)
    measured = e.handle.memory_bytes if e.handle is not None and e.state == "resident" else None
    return ModelStatus(
        model_id=meta.model_id,
        family=meta.family,
        state=e.state,
        pinned=e.pinned,
        is_default=meta.model_id == policy.default_id,
        refcount=e.refcount,
        last_used_unix=e.last_used_unix,
        ttl_remaining_ms=policy.ttl_remaining_ms(e, now),
        memory_bytes=estimate if measured is None else measured,
        estimated_memory_bytes=estimate,
        load_ms=e.load_ms,
        loaded_unix=e.loaded_unix,
        device=device,
        tags=meta.tags,
        languages=meta.languages,
        native_sr=meta.native_sr,
        unavailable_reason=e.error,
        base_model=meta.base_model,
        adapters=tuple(sorted(e.attached)),
    )


def merge_catalog(entries: dict[str, Entry], catalog: Catalog) -> dict[str, Entry]:
    """Entries for a RELOADed catalog, in its order; then dropped models still in memory."""
    old, fresh = dict(entries), {}
    for meta in catalog:
        entry = old.pop(meta.model_id, None) or new_entry(meta)
        entry.meta, entry.dropped = meta, False
        if entry.state in ("not_loaded", "unavailable"):
            entry.state, entry.error = "not_loaded", None  # a reload usually follows a fix
            if meta.unavailable:
                entry.state, entry.error = "unavailable", meta.unavailable
        fresh[meta.model_id] = entry
    for model_id, entry in old.items():
        if entry.state in ("loading", "resident", "unloading"):
            entry.dropped = True
            fresh[model_id] = entry
    return fresh


def occupancy(entries: Iterable[Entry]) -> int:
    """What counts against resident_cap: resident models and loads holding a slot. LoRA voices
    do not count: an adapter is megabytes and shares its base, which counts once."""
    return sum(
        not e.meta.is_lora and (e.state == "resident" or (e.state == "loading" and e.load_running))
        for e in entries
    )


def reserved_bytes(entries: Iterable[Entry], device: str, *, besides: Entry) -> int:
    """Estimates of the other loads on `device` holding a slot: not in the probe's figure yet."""
    return sum(
        estimate_bytes(e.meta, device)
        for e in entries
        if e.load_running and e is not besides and (e.device or device) == device
    )


def busy_refusal(in_flight: int, config: ModelManagerConfig) -> BusyError:
    return BusyError(
        f"{in_flight} model loads in flight (max_parallel_loads={config.max_parallel_loads}, "
        f"max_pending_loads={config.max_pending_loads})",
        hint="retry shortly",
    )


def cap_refusal(
    entry: Entry, entries: Iterable[Entry], policy: Policy, now: float, cap: int
) -> ResourceExhausted:
    kept = ", ".join(
        f"{e.model_id} ({policy.why_kept(e, now)})" for e in entries if e.state == "resident"
    )
    return ResourceExhausted(
        f"cannot load {entry.model_id}: resident_cap={cap} reached and no model can be "
        f"evicted: {kept}",
        hint="end sessions, unpin or unload a model, or raise resident_cap",
    )


def memory_refusal(
    entry: Entry, device: str, needed: int, free: int, config: ModelManagerConfig
) -> ResourceExhausted:
    return ResourceExhausted(
        f"not enough memory on {device} to load {entry.model_id}: needs {needed / _MIB:.0f} "
        f"MiB, {max(free, 0) / _MIB:.0f} MiB free (after {config.memory_headroom_mb} MiB "
        "headroom) and no idle model to evict",
        hint="unload or unpin a model, end sessions, or give the worker more memory",
    )


def unload_refusal(entry: Entry, *, force: bool, default_id: str) -> DuplexError | None:
    """Why an explicit UnloadModel must be refused (None: go ahead)."""
    model_id = entry.model_id
    if entry.state != "resident":
        return FailedPrecondition(f"model {model_id!r} is not resident (state: {entry.state})")
    if entry.users:
        return ModelInUse(
            f"model {model_id!r} is in use (refcount {entry.users})",
            hint="end the sessions using it first; force does not override this",
        )
    if entry.attached:
        voices = ", ".join(sorted(entry.attached))
        return FailedPrecondition(
            f"model {model_id!r} has LoRA voices attached: {voices}",
            hint=f"unload them first (`duplexctl models unload {sorted(entry.attached)[0]}`)",
        )
    if entry.pinned and not force:
        return FailedPrecondition(
            f"model {model_id!r} is pinned", hint="unpin it first, or unload with force"
        )
    if model_id == default_id and not force:
        return FailedPrecondition(
            f"model {model_id!r} is the default model", hint="unload with force to do it anyway"
        )
    return None


class Lease:
    """A refcount on a resident model: the model cannot be evicted or unloaded while held.

    `release()` is idempotent; an ``async with`` block releases on exit.
    """

    def __init__(self, entry: Entry, on_release: Callable[[Entry], None]) -> None:
        assert entry.handle is not None, "a lease needs a resident model"
        self.model_id: str = entry.model_id
        self.meta: ModelMeta = entry.meta
        self.handle: ModelHandle = entry.handle
        self._entry = entry
        self._on_release = on_release
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._on_release(self._entry)

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Lease({self.model_id!r}, released={self._released})"


class TaskSet:
    """Owns the manager's background tasks (loads, unloads): nothing runs unowned."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    async def wait_all(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # the waiters got it; don't warn "never retrieved" if none was left


class Subscribers:
    """`callback(event, model_id)` listeners; a failing listener is logged, never propagated."""

    def __init__(self, log: Any) -> None:
        self._callbacks: list[Callable[[str, str], None]] = []
        self._log = log

    def add(self, callback: Callable[[str, str], None]) -> Callable[[], None]:
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    def emit(self, event: str, model_id: str) -> None:
        for callback in list(self._callbacks):
            try:
                callback(event, model_id)
            except Exception:
                self._log.exception(
                    "model event subscriber failed", event_name=event, model=model_id
                )
