"""The Model Manager: which models are resident in this worker, modelled on Ollama's scheduler.

Each synthesis holds a `Lease` (a refcount); at refcount 0 the model's idle clock starts and the
evictor may unload it once idle past ``ttl_ms`` and resident past ``min_residency_ms``. Pinned
and default models stay. A load first makes room: above ``resident_cap`` it evicts the least
recently used idle model, and if the memory pre-check says the model will not fit it evicts idle
models until it does, or refuses with RESOURCE_EXHAUSTED *before* touching the engine, so the
worker never runs out of memory. At most ``max_parallel_loads`` loads run; beyond
``max_pending_loads`` waiting ones the answer is "busy" rather than an unbounded queue.
Concurrent requests for one model share one load.

LoRA voices are first-class entries with a `base_model`: loading one first makes its base
resident (a load like any other), then only attaches the adapter (`attach_fn`, milliseconds).
An attached voice keeps its base resident; unloading or evicting it detaches only the adapter,
and the base's idle clock starts when its last voice goes. Voices do not count against
``resident_cap`` (the base does, once).

Each load resolves its device first (`device_of`, off the event loop: it may import torch), so
the memory pre-check, the estimates and ListModels speak of the device the model really uses.

The loader, the clocks, the memory probe and the thread hop are injected, so the unit tests run
the real scheduling logic in milliseconds (see `duplexd.devkit.models`).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import time
from collections.abc import Callable, Iterator

from duplexd.config import ModelManagerConfig
from duplexd.errors import (
    DuplexError,
    FailedPrecondition,
    ModelLoadError,
    ModelNotFound,
    WeightsMissing,
)
from duplexd.logging import get_logger
from duplexd.tts import memory
from duplexd.tts._manager_state import (
    AttachFn,
    DeviceFn,
    Entry,
    Lease,
    LoadFn,
    LoadOutcome,
    LoadResult,
    ModelHandle,
    ModelState,
    ModelStatus,
    Policy,
    RunBlocking,
    Subscribers,
    TaskSet,
    build_status,
    busy_refusal,
    cap_refusal,
    estimate_bytes,
    memory_refusal,
    merge_catalog,
    new_entry,
    occupancy,
    reserved_bytes,
    unload_refusal,
)
from duplexd.tts.catalog import Catalog, ModelMeta

__all__ = [
    "AttachFn",
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
    ) -> None:
        self._catalog = catalog
        self._config = config
        self._load_fn = load_fn
        self._clock = clock
        self._wall = wall_clock
        self._probe = memory_probe
        self._run_blocking = run_blocking
        self._device = device  # the worker's setting; shown until a load resolves one
        self._device_of: DeviceFn = device_of or (lambda _meta: device)
        self._attach_fn: AttachFn = attach_fn or _no_lora
        self._policy = Policy(
            config.default_model_id, config.ttl_ms / 1000, config.min_residency_ms / 1000
        )
        self._entries: dict[str, Entry] = {meta.model_id: new_entry(meta) for meta in catalog}
        self._load_slots = asyncio.Semaphore(config.max_parallel_loads)
        self._in_flight = 0  # load tasks running or waiting for a slot
        self._tasks = TaskSet()
        self._events = Subscribers(log)
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
            self._catalog.get(default)
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
        if self._evictor is not None:
            self._evictor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._evictor
            self._evictor = None
        await self._tasks.wait_all()
        # LoRA voices first: each keeps its base resident
        for entry in sorted(self._entries.values(), key=lambda e: not e.meta.is_lora):
            if entry.state == "resident":
                if entry.users:
                    log.warning("unloading a leased model at shutdown", model=entry.model_id)
                await self._unload(entry, "unloaded", reason="shutdown")

    # -- leases and loads ------------------------------------------------------------------

    async def acquire(self, model_id: str) -> Lease:
        """A lease on `model_id`, loading it first if needed (refcount + 1)."""
        entry = self._entry_for_use(model_id)
        with self._held(entry):
            await self._ensure_resident(entry, bounded=True)
            entry.refcount += 1
        self._touch(entry)
        return Lease(entry, self._release)

    async def load(self, model_id: str, *, pin: bool = False) -> LoadResult:
        """Make `model_id` resident (a LoadModel counts as a use), pinning it if asked."""
        entry = self._entry_for_use(model_id)
        with self._held(entry):
            outcome = await self._ensure_resident(entry, bounded=True)
            if pin:
                self._set_pin(entry, True)
        if outcome is None:
            self._touch(entry)
            return LoadResult(self._status(entry), True, 0.0, [])
        return LoadResult(self._status(entry), False, outcome.load_ms, list(outcome.evicted))

    async def unload(self, model_id: str, *, force: bool = False) -> int:
        """Unload a resident, unleased model; returns the bytes its handle reported."""
        entry = self._existing(model_id)
        refusal = unload_refusal(entry, force=force, default_id=self.default_model_id)
        if refusal is not None:
            raise refusal
        return await self._unload(entry, "unloaded", reason="requested")

    def set_pinned(self, model_id: str, pinned: bool) -> ModelStatus:
        entry = self._existing(model_id)
        if entry.state != "resident":
            raise FailedPrecondition(
                f"model {model_id!r} is not resident (state: {entry.state})",
                hint="load it with pin=true instead",
            )
        self._set_pin(entry, pinned)
        return self._status(entry)

    # -- reading ---------------------------------------------------------------------------

    def status(self, model_id: str) -> ModelStatus:
        return self._status(self._existing(model_id))

    def list(self) -> builtins.list[ModelStatus]:  # `builtins.` below: this shadows list
        """Every catalog entry in catalog order, then dropped models that are still resident."""
        return [self._status(entry) for entry in self._entries.values()]

    def resident_ids(self) -> builtins.list[str]:
        return [e.model_id for e in self._entries.values() if e.state == "resident"]

    # -- eviction and reload ---------------------------------------------------------------

    async def evict_idle(self, now: float | None = None) -> builtins.list[str]:
        """One evictor pass: unload idle models past their TTL; returns their ids."""
        now = self._clock() if now is None else now
        evicted: builtins.list[str] = []
        for entry in [e for e in self._entries.values() if self._policy.expired(e, now)]:
            if self._policy.expired(entry, now):  # an earlier unload may have awaited
                reason = "dropped from catalog" if entry.dropped else "ttl"
                await self._unload(entry, "evicted", reason=reason)
                evicted.append(entry.model_id)
        return evicted

    def replace_catalog(self, catalog: Catalog) -> None:
        """RELOAD: new entries appear, resident ones keep serving, dropped ones go once idle.

        Remembered load errors are forgotten: a reload usually follows a fix (pulled weights).
        """
        self._entries, self._catalog = merge_catalog(self._entries, catalog), catalog
        if self.default_model_id not in catalog:
            log.warning("default model dropped from the catalog", model=self.default_model_id)

    def subscribe(self, callback: Callable[[str, str], None]) -> Callable[[], None]:
        """Call `callback(event, model_id)` on model events; returns the unsubscribe function."""
        return self._events.add(callback)

    # -- internals: lookup and leases ------------------------------------------------------

    def _entry_for_use(self, model_id: str) -> Entry:
        if self._closing:
            raise FailedPrecondition("the model manager is shutting down")
        meta = self._catalog.get(model_id)  # ModelNotFound with a did-you-mean hint
        if meta.unavailable:
            raise FailedPrecondition(
                f"model {model_id!r} cannot be served by this build: {meta.unavailable}",
                hint="see docs/models.md",
            )
        if meta.base_model is not None and meta.base_model not in self._catalog:
            raise ModelNotFound(
                f"LoRA voice {model_id!r} needs base model {meta.base_model!r}, "
                "which is not in the catalog",
                hint="add the base model's catalog entry or voicepack",
            )
        return self._entries[model_id]

    def _existing(self, model_id: str) -> Entry:
        entry = self._entries.get(model_id)
        if entry is None:
            self._catalog.get(model_id)  # raises ModelNotFound
            raise ModelNotFound(f"unknown model {model_id!r}")
        return entry

    @contextlib.contextmanager
    def _held(self, entry: Entry) -> Iterator[None]:
        entry.holds += 1
        try:
            yield
        finally:
            entry.holds -= 1

    def _touch(self, entry: Entry) -> None:
        entry.last_used, entry.last_used_unix = self._clock(), self._wall()

    def _release(self, entry: Entry) -> None:
        entry.refcount -= 1
        if entry.refcount == 0:
            self._touch(entry)  # the idle clock starts now

    def _set_pin(self, entry: Entry, pinned: bool) -> None:
        if entry.pinned != pinned:
            entry.pinned = pinned
            log.info("model pinned" if pinned else "model unpinned", model=entry.model_id)
            self._events.emit("pinned" if pinned else "unpinned", entry.model_id)

    def _status(self, entry: Entry) -> ModelStatus:
        return build_status(entry, self._policy, self._clock(), self._device_for(entry))

    def _device_for(self, entry: Entry) -> str:
        return entry.device or self._device

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
        cfg = self._config
        if self._closing:
            raise FailedPrecondition("the model manager is shutting down")
        if bounded and self._in_flight >= cfg.max_parallel_loads + cfg.max_pending_loads:
            raise busy_refusal(self._in_flight, cfg)
        self._in_flight += 1
        entry.state = "loading"
        entry.loading = self._tasks.spawn(self._load_task(entry), f"load-{entry.model_id}")
        self._events.emit("loading", entry.model_id)
        return entry.loading

    async def _load_task(self, entry: Entry) -> LoadOutcome:
        try:
            entry.device = await self._run_blocking(functools.partial(self._device_of, entry.meta))
            if entry.meta.is_lora:
                return await self._attach_now(entry)  # no load slot: milliseconds, no new base
            async with self._load_slots:
                entry.load_running = True
                return await self._load_now(entry)
        except Exception as exc:
            self._load_failed(entry, exc)
            raise
        finally:
            entry.load_running, entry.loading = False, None
            self._in_flight -= 1
            if entry.state == "loading":  # cancelled
                entry.state = "not_loaded"

    async def _load_now(self, entry: Entry) -> LoadOutcome:
        if self._closing:
            raise FailedPrecondition("the model manager is shutting down")
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
        with self._held(base):
            await self._ensure_resident(base, bounded=False)
            base.attached.add(entry.model_id)  # from here the base cannot be evicted
        try:
            evicted = await self._make_room(entry)
            started = self._clock()
            assert base.handle is not None
            handle = await self._run_blocking(
                functools.partial(self._attach_fn, base.handle, entry.meta)
            )
        except BaseException:
            self._detached(entry)
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
        entry.mark_resident(handle, load_ms, self._clock(), self._wall())
        self._events.emit("loaded", entry.model_id)
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

    def _detached(self, entry: Entry) -> None:
        """A LoRA voice left (or never arrived): its base's idle clock may start."""
        base = self._entries.get(entry.meta.base_model or "")
        if base is not None and entry.model_id in base.attached:
            base.attached.discard(entry.model_id)
            self._touch(base)

    def _load_failed(self, entry: Entry, exc: Exception) -> None:
        entry.state = "unavailable" if isinstance(exc, WeightsMissing) else "not_loaded"
        entry.error = str(exc)
        log.warning("model load failed", model=entry.model_id, error=str(exc))
        self._events.emit("load_failed", entry.model_id)

    # -- internals: making room ------------------------------------------------------------

    async def _make_room(self, entry: Entry) -> builtins.list[str]:
        """Evict for the cap (honouring min residency), then for memory (not: refusing a load
        is worse than reloading a young model); refuse with RESOURCE_EXHAUSTED if still short."""
        cap, entries = self._config.resident_cap, self._entries.values()
        device = self._device_for(entry)
        needed = estimate_bytes(entry.meta, device)
        evicted = await self._evict_until(
            lambda: occupancy(entries) <= cap,
            lambda now: cap_refusal(entry, entries, self._policy, now, cap),
            honour_min_residency=True,
            reason="resident_cap",
        )
        evicted += await self._evict_until(
            lambda: self._free_bytes(entry) >= needed,
            lambda now: memory_refusal(
                entry, device, needed, self._free_bytes(entry), self._config
            ),
            honour_min_residency=False,
            reason="memory",
        )
        return evicted

    async def _evict_until(
        self,
        fits: Callable[[], bool],
        refusal: Callable[[float], DuplexError],
        *,
        honour_min_residency: bool,
        reason: str,
    ) -> builtins.list[str]:
        evicted: builtins.list[str] = []
        while not fits():
            now = self._clock()
            victim = self._policy.lru_victim(
                self._entries.values(), now, honour_min_residency=honour_min_residency
            )
            if victim is None:
                raise refusal(now)
            await self._unload(victim, "evicted", reason=reason)
            evicted.append(victim.model_id)
        return evicted

    def _free_bytes(self, entry: Entry) -> int:
        # Other loads past this check have not grown the process yet: count their estimates
        # as taken, or two parallel loads could each see the same free memory.
        device = self._device_for(entry)
        reserved = reserved_bytes(self._entries.values(), device, besides=entry)
        headroom = self._config.memory_headroom_mb * _MIB
        return self._probe(device) - headroom - reserved

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
            entry.forget_handle()
            self._detached(entry)
            if entry.dropped:
                self._entries.pop(entry.model_id, None)
        close_ms = (self._clock() - started) * 1000
        log.info(
            "model " + event,
            model=entry.model_id,
            reason=reason,
            close_ms=round(close_ms, 1),
            freed_mib=round(freed / _MIB, 1),
        )
        self._events.emit(event, entry.model_id)
        return freed

    # -- internals: tasks and events -------------------------------------------------------

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
