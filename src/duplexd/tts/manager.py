"""The Model Manager: which models are resident in this worker, modelled on Ollama's scheduler.

Each synthesis holds a `Lease` (a refcount); at refcount 0 the model's idle clock starts and the
evictor may unload it once idle past ``ttl_ms`` and resident past ``min_residency_ms``. Pinned
and default models stay. A load first checks what can be checked without loading (`check_fn`:
weights pulled, engine and extra installed; see `duplexd.tts.readiness`) and refuses with that
cause, so a load that cannot happen never evicts a warm model. Then it makes room: above
``resident_cap`` it evicts the least recently used idle model, and if the memory pre-check says
the model will not fit it evicts idle models until it does. Room is planned before anything is
evicted: when evicting every model that may go would not be enough, the load is refused with
RESOURCE_EXHAUSTED at once, *before* touching the engine or any resident model, so the worker
never runs out of memory and never gives up a warm model for nothing. At most
``max_parallel_loads`` loads run; beyond ``max_pending_loads`` waiting ones the answer is
"busy" rather than an unbounded queue. Concurrent requests for one model share one load.

LoRA voices are first-class entries with a `base_model`: loading one first makes its base
resident (a load like any other), then only attaches the adapter (`attach_fn`, milliseconds).
An attached voice keeps its base resident; unloading or evicting it detaches only the adapter,
and the base's idle clock starts when its last voice goes. Voices do not count against
``resident_cap`` (the base does, once).

Each load resolves its device first (`device_of`, off the event loop: it may import torch), so
the memory pre-check, the estimates and ListModels speak of the device the model really uses.

This module carries loads and unloads out (the load slots, the tasks, the thread hops, the
events); *what* may load, what must go first and why a request is refused are decided in
`duplexd.tts.residency`, which a load calls into step by step. The public value types are in
`duplexd.tts.model_status`; import them from here.

The loader, the clocks, the memory probe and the thread hop are injected, so the unit tests run
the real scheduling logic in milliseconds (see `duplexd.devkit.models`).
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import time
from collections.abc import Callable

from duplexd.aio import Subscribers, TaskSet, cancel_and_wait
from duplexd.config import ModelManagerConfig
from duplexd.errors import DuplexError, FailedPrecondition, ModelLoadError, ModelNotFound
from duplexd.logging import get_logger
from duplexd.tts import memory
from duplexd.tts.catalog import Catalog, ModelMeta
from duplexd.tts.model_status import (
    AttachFn,
    DeviceFn,
    LoadFn,
    LoadOutcome,
    LoadResult,
    ModelHandle,
    ModelState,
    ModelStatus,
    RunBlocking,
)
from duplexd.tts.readiness import Blocker, CheckFn, weights_blocker
from duplexd.tts.residency import Lease, Residency
from duplexd.tts.residency_policy import Entry

__all__ = [
    "AttachFn",
    "CheckFn",
    "DeviceFn",
    "Lease",
    "LoadFn",
    "LoadResult",
    "ModelHandle",
    "ModelManager",
    "ModelState",
    "ModelStatus",
    "RunBlocking",
]

log = get_logger("duplexd.tts.manager")

_MIB = 2**20


class ModelManager:
    """Loads, leases, pins and evicts the models of one worker. See the module docstring."""

    def __init__(
        self,
        catalog: Catalog,
        config: ModelManagerConfig,
        load_fn: LoadFn,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        memory_probe: Callable[[str], int] = memory.available_bytes,
        run_blocking: RunBlocking = asyncio.to_thread,
        device: str = "cpu",
        device_of: DeviceFn | None = None,
        attach_fn: AttachFn | None = None,
        check_fn: CheckFn = weights_blocker,
    ) -> None:
        self._config = config
        self._models = Residency(catalog, config, device=device, clock=clock, wall_clock=wall_clock)
        self._load_fn = load_fn
        self._clock = clock
        self._probe = memory_probe
        self._run_blocking = run_blocking
        self._device_of: DeviceFn = device_of or (lambda _meta: device)
        self._attach_fn: AttachFn = attach_fn or _no_lora
        self._check_fn = check_fn
        self._load_slots = asyncio.Semaphore(config.max_parallel_loads)
        self._in_flight = 0  # load tasks running or waiting for a slot
        # loads and unloads; their awaiters get (and report) any error
        self._tasks = TaskSet(log=None)
        self._events: Subscribers[[str, str]] = Subscribers(
            log=log,
            failure_event="model event subscriber failed",
            arg_names=("event_name", "model"),
        )
        self._evictor: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def default_model_id(self) -> str:
        return self._config.default_model_id

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load + warm the default (failure is fatal), then the preload list, then the evictor."""
        default = self.default_model_id
        try:
            self._models.catalog.get(default)
        except ModelNotFound as exc:
            raise ModelNotFound(
                f"default model {default!r} is not in the catalog", hint=exc.hint
            ) from None
        await self.load(default)
        preload = [m for m in dict.fromkeys(self._config.preload_model_ids) if m != default]
        await asyncio.gather(*(self._preload(model_id) for model_id in preload))
        self._evictor = asyncio.create_task(self._evict_loop(), name="model-evictor")

    async def aclose(self) -> None:
        """Stop the evictor, let in-flight loads finish, unload everything."""
        self._closing = True
        await cancel_and_wait(self._evictor)
        self._evictor = None
        await self._tasks.wait_all()
        for entry in self._models.shutdown_order():
            if entry.state == "resident":
                if entry.users:
                    log.warning("unloading a leased model at shutdown", model=entry.model_id)
                await self._unload(entry, "unloaded", reason="shutdown")

    # -- leases and loads ------------------------------------------------------------------

    async def acquire(self, model_id: str) -> Lease:
        """A lease on `model_id`, loading it first if needed (refcount + 1)."""
        entry = self._entry_for_use(model_id)
        with entry.held():
            await self._ensure_resident(entry, bounded=True)
            self._models.take(entry)
        return Lease(entry, self._models.release)

    async def load(self, model_id: str, *, pin: bool = False) -> LoadResult:
        """Make `model_id` resident (a LoadModel counts as a use), pinning it if asked."""
        entry = self._entry_for_use(model_id)
        with entry.held():
            outcome = await self._ensure_resident(entry, bounded=True)
            if pin:
                self._set_pin(entry, True)
        if outcome is None:
            self._models.touch(entry)
            return LoadResult(self._status(entry), True, 0.0, [])
        return LoadResult(self._status(entry), False, outcome.load_ms, list(outcome.evicted))

    async def unload(self, model_id: str, *, force: bool = False) -> int:
        """Unload a resident, unleased model; returns the bytes its handle reported."""
        entry = self._models.existing(model_id)
        self._models.check_unload(entry, force=force)
        return await self._unload(entry, "unloaded", reason="requested")

    def set_pinned(self, model_id: str, pinned: bool) -> ModelStatus:
        entry = self._models.existing(model_id)
        self._models.check_pin(entry)
        self._set_pin(entry, pinned)
        return self._status(entry)

    # -- reading ---------------------------------------------------------------------------

    def status(self, model_id: str) -> ModelStatus:
        return self._status(self._models.existing(model_id))

    def list(self) -> builtins.list[ModelStatus]:  # `builtins.` below: this shadows list
        """Every catalog entry in catalog order, then dropped models that are still resident."""
        return [self._status(entry) for entry in self._models.entries.values()]

    def blocker(self, model_id: str) -> Blocker | None:
        """Why `model_id` cannot load here now (weights, engine, its LoRA base), or None."""
        return self._blocker(self._models.existing(model_id).meta)

    def _blocker(self, meta: ModelMeta) -> Blocker | None:
        blocker = self._check(meta)
        base = meta.base_model
        if blocker is None and base is not None and base in self._models.catalog:
            entry = self._models.entries.get(base)
            if entry is None or entry.state not in ("resident", "loading"):
                found = self._check(self._models.catalog.get(base))
                if found is not None:  # the voice waits for its base: say so, and why
                    blocker = Blocker(f"base {found.word}", found.error)
        return blocker

    def resident_ids(self) -> builtins.list[str]:
        return [e.model_id for e in self._models.entries.values() if e.state == "resident"]

    # -- eviction and reload ---------------------------------------------------------------

    async def evict_idle(self, now: float | None = None) -> builtins.list[str]:
        """One evictor pass: unload idle models past their TTL; returns their ids."""
        now = self._clock() if now is None else now
        evicted: builtins.list[str] = []
        for entry in self._models.expired(now):
            if self._models.policy.expired(entry, now):  # an earlier unload may have awaited
                reason = "dropped from catalog" if entry.dropped else "ttl"
                await self._unload(entry, "evicted", reason=reason)
                evicted.append(entry.model_id)
        return evicted

    def replace_catalog(self, catalog: Catalog) -> None:
        """RELOAD: new entries appear, resident ones keep serving, dropped ones go once idle.

        Remembered load errors are forgotten: a reload usually follows a fix (pulled weights).
        """
        self._models.replace_catalog(catalog)
        if self.default_model_id not in catalog:
            log.warning("default model dropped from the catalog", model=self.default_model_id)

    def subscribe(self, callback: Callable[[str, str], None]) -> Callable[[], None]:
        """Call `callback(event, model_id)` on model events; returns the unsubscribe function."""
        return self._events.subscribe(callback)

    # -- internals -------------------------------------------------------------------------

    def _status(self, entry: Entry) -> ModelStatus:
        blocked = entry.state in ("not_loaded", "unavailable") and not entry.meta.unavailable
        return self._models.status(entry, self._blocker(entry.meta) if blocked else None)

    def _check(self, meta: ModelMeta) -> Blocker | None:
        try:
            return self._check_fn(meta)
        except Exception:  # a broken check must not break a listing: the load will tell
            log.exception("model check failed", model=meta.model_id)
            return None

    def _prepare(self, meta: ModelMeta) -> str:
        """Blocking, before a load makes room: refuse what cannot load (the real cause, no
        eviction), then resolve the device."""
        blocker = self._check(meta)
        if blocker is not None:
            raise blocker.error
        return self._device_of(meta)

    def _check_open(self) -> None:
        if self._closing:
            raise FailedPrecondition("the model manager is shutting down")

    def _entry_for_use(self, model_id: str) -> Entry:
        self._check_open()
        return self._models.for_use(model_id)

    def _set_pin(self, entry: Entry, pinned: bool) -> None:
        if entry.pinned != pinned:
            entry.pinned = pinned
            log.info("model pinned" if pinned else "model unpinned", model=entry.model_id)
            self._events.notify("pinned" if pinned else "unpinned", entry.model_id)

    # -- internals: loading ----------------------------------------------------------------

    async def _preload(self, model_id: str) -> None:
        try:
            await self._ensure_resident(self._entry_for_use(model_id), bounded=False)
        except Exception as exc:
            log.warning("preload failed", model=model_id, error=str(exc))

    async def _ensure_resident(self, entry: Entry, *, bounded: bool) -> LoadOutcome | None:
        """None if already resident, else the outcome of the (possibly shared) load."""
        outcome = None
        # A loop, because a model can leave between a load and the waiter's wake-up (only at
        # shutdown: holds keep the evictor off it), and an unloading one must finish first.
        while entry.state != "resident":
            if entry.closing is not None:
                await asyncio.shield(entry.closing)
                continue
            task = entry.loading
            if task is None:
                task = self._start_load(entry, bounded=bounded)
            outcome = await asyncio.shield(task)  # a cancelled waiter must not cancel the load
        return outcome

    def _start_load(self, entry: Entry, *, bounded: bool) -> asyncio.Task[LoadOutcome]:
        self._check_open()
        self._models.check_admission(self._in_flight, bounded=bounded)
        self._in_flight += 1
        entry.state = "loading"
        entry.loading = self._tasks.spawn(self._load_task(entry), f"load-{entry.model_id}")
        self._events.notify("loading", entry.model_id)
        return entry.loading

    async def _load_task(self, entry: Entry) -> LoadOutcome:
        prepared = False
        try:
            entry.device = await self._run_blocking(functools.partial(self._prepare, entry.meta))
            prepared = True
            if entry.meta.is_lora:
                return await self._attach_now(entry)  # no load slot: milliseconds, no new base
            async with self._load_slots:
                entry.load_running = True
                return await self._load_now(entry)
        except Exception as exc:
            # refused by the check: ListModels asks it again, so a pull shows at once
            entry.mark_failed(exc, sticky=prepared)
            log.warning("model load failed", model=entry.model_id, error=str(exc))
            self._events.notify("load_failed", entry.model_id)
            raise
        finally:
            entry.load_running, entry.loading = False, None
            self._in_flight -= 1
            if entry.state == "loading":  # cancelled
                entry.state = "not_loaded"

    async def _load_now(self, entry: Entry) -> LoadOutcome:
        self._check_open()
        evicted = await self._make_room(entry)
        started = self._clock()
        try:
            handle = await self._run_blocking(functools.partial(self._load_fn, entry.meta))
        except DuplexError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"failed to load {entry.model_id}: {exc}") from exc
        return self._loaded(entry, handle, started, evicted)

    async def _attach_now(self, entry: Entry) -> LoadOutcome:
        """A LoRA voice: make its base resident (a normal load if needed), attach the adapter."""
        assert entry.meta.base_model is not None
        base = self._entry_for_use(entry.meta.base_model)
        with base.held():
            await self._ensure_resident(base, bounded=False)
            self._models.attach(entry, base)
        try:
            evicted = await self._make_room(entry)
            started = self._clock()
            assert base.handle is not None
            handle = await self._run_blocking(
                functools.partial(self._attach_fn, base.handle, entry.meta)
            )
        except BaseException:
            self._models.detach(entry)
            raise
        return self._loaded(entry, handle, started, evicted, base=base.model_id)

    def _loaded(
        self,
        entry: Entry,
        handle: ModelHandle,
        started: float,
        evicted: builtins.list[str],
        base: str | None = None,
    ) -> LoadOutcome:
        load_ms = (self._clock() - started) * 1000
        self._models.mark_resident(entry, handle, load_ms)
        self._events.notify("loaded", entry.model_id)
        log.info(
            "model attached" if base else "model loaded",
            model=entry.model_id,
            base=base,
            device=entry.device,
            load_ms=round(load_ms, 1),
            memory_mib=round(handle.memory_bytes / _MIB, 1),
            evicted=evicted,
        )
        return LoadOutcome(load_ms, tuple(evicted))

    async def _make_room(self, entry: Entry) -> builtins.list[str]:
        """Evict what the plan names (for the cap, then for memory), or refuse with
        RESOURCE_EXHAUSTED before evicting anything when the plan cannot make room. Then
        measure again: the loops evict more, or refuse, if the figures were off."""
        evicted: builtins.list[str] = []
        device = self._models.device_for(entry)
        for planned, reason in self._models.plan_room(entry, self._probe(device)):
            # an earlier unload awaited: the victim may have been taken or evicted since
            if self._models.policy.kept_because(planned) is None:
                await self._unload(planned, "evicted", reason=reason)
                evicted.append(planned.model_id)
        while (victim := self._models.cap_victim(entry)) is not None:
            await self._unload(victim, "evicted", reason="resident_cap")
            evicted.append(victim.model_id)
        while (victim := self._models.memory_victim(entry, self._probe(device))) is not None:
            await self._unload(victim, "evicted", reason="memory")
            evicted.append(victim.model_id)
        return evicted

    # -- internals: unloading --------------------------------------------------------------

    async def _unload(self, entry: Entry, event: str, *, reason: str) -> int:
        entry.state = "unloading"  # synchronously, so no one else picks it as a victim
        task = self._tasks.spawn(self._close(entry, event, reason), f"unload-{entry.model_id}")
        entry.closing = task
        return await asyncio.shield(task)

    async def _close(self, entry: Entry, event: str, reason: str) -> int:
        assert entry.handle is not None
        handle, started = entry.handle, self._clock()
        freed = handle.memory_bytes
        try:
            await self._run_blocking(handle.close)
        except Exception as exc:
            # The handle is unusable either way; forgetting it beats a model stuck "unloading".
            log.error("model close failed", model=entry.model_id, error=str(exc))
        finally:
            self._models.unloaded(entry)  # detaches a LoRA voice; drops a dropped model
        close_ms = (self._clock() - started) * 1000
        log.info(
            "model " + event,
            model=entry.model_id,
            reason=reason,
            close_ms=round(close_ms, 1),
            freed_mib=round(freed / _MIB, 1),
        )
        self._events.notify(event, entry.model_id)
        return freed

    async def _evict_loop(self) -> None:
        interval = self._config.evict_check_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                await self.evict_idle()
            except Exception:
                log.exception("evictor pass failed")


def _no_lora(base: ModelHandle, meta: ModelMeta) -> ModelHandle:
    raise FailedPrecondition(f"{meta.model_id!r} is a LoRA voice and this worker attaches none")
