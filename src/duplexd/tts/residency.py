"""Which models stay resident in a worker, and why a request is refused.

The Model Manager (`manager.py`) carries a load or an unload out: locks, threads, tasks and
events. Everything it *decides* is here, as plain functions of the entries and a time, so the
rules read (and change) without the async machinery around them:

- `Entry`: what is known about one model (its state, handle, users, pin and clocks).
- `Policy`: which resident model may go, and when: idle past ``ttl_ms`` and resident past
  ``min_residency_ms``, least recently used first under ``resident_cap``; pinned, default,
  leased models and bases with LoRA voices attached stay. (These two are defined in
  `duplexd.tts.residency_policy`.)
- `Lease`: a caller's refcount on a resident entry, released back to the `Residency`.
- `Residency`: the worker's table of entries under that policy, and the refusals with the
  messages operators read: unknown or unavailable model, a LoRA voice without its base, too many
  loads in flight, resident_cap reached or not enough memory with nothing evictable, an unload of
  a model that is leased, pinned, the default or a base with voices.

LoRA voices are entries with a `base_model`. An attached voice keeps its base resident (its id
sits in the base's `attached`); when it goes, the base's idle clock starts. Voices do not count
against ``resident_cap``: an adapter is megabytes and shares its base, which counts once.

The value types it reports are in `duplexd.tts.model_status`; import the public names from
`duplexd.tts.manager`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from duplexd.config import ModelManagerConfig
from duplexd.errors import (
    BusyError,
    FailedPrecondition,
    ModelInUse,
    ModelNotFound,
    ResourceExhausted,
)
from duplexd.tts.catalog import Catalog, ModelMeta
from duplexd.tts.model_status import ModelHandle, ModelState, ModelStatus
from duplexd.tts.readiness import NOT_LOADED, NOT_PULLED, UNAVAILABLE, Blocker
from duplexd.tts.residency_policy import Entry, Policy, estimate_bytes, new_entry

_MIB = 2**20


class Residency:
    """The worker's models under the policy: what each request may do, and what must go first.

    Mutated only from the event loop; `clock` (monotonic) and `wall_clock` (unix) are seconds.
    """

    def __init__(
        self,
        catalog: Catalog,
        config: ModelManagerConfig,
        *,
        device: str,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self.catalog = catalog
        self.config = config
        self.device = device  # the worker's setting; shown until a load resolves one
        self.policy = Policy(
            config.default_model_id, config.ttl_ms / 1000, config.min_residency_ms / 1000
        )
        self.entries: dict[str, Entry] = {meta.model_id: new_entry(meta) for meta in catalog}
        self._clock = clock
        self._wall = wall_clock

    # -- lookups that refuse ---------------------------------------------------------------

    def for_use(self, model_id: str) -> Entry:
        """The entry to load or lease: in the catalog, servable, and a LoRA voice's base too."""
        meta = self.catalog.get(model_id)  # ModelNotFound with a did-you-mean hint
        if meta.unavailable:
            raise FailedPrecondition(
                f"model {model_id!r} cannot be served by this build: {meta.unavailable}",
                hint="see docs/models.md",
            )
        if meta.base_model is not None and meta.base_model not in self.catalog:
            raise ModelNotFound(
                f"LoRA voice {model_id!r} needs base model {meta.base_model!r}, "
                "which is not in the catalog",
                hint="add the base model's catalog entry or voicepack",
            )
        return self.entries[model_id]

    def existing(self, model_id: str) -> Entry:
        """The entry to read, pin or unload (a dropped model still in memory included)."""
        entry = self.entries.get(model_id)
        if entry is None:
            self.catalog.get(model_id)  # raises ModelNotFound
            raise ModelNotFound(f"unknown model {model_id!r}")
        return entry

    def check_pin(self, entry: Entry) -> None:
        if entry.state != "resident":
            raise FailedPrecondition(
                f"model {entry.model_id!r} is not resident (state: {entry.state})",
                hint="load it with pin=true instead",
            )

    def check_unload(self, entry: Entry, *, force: bool) -> None:
        """An explicit UnloadModel: refused while leased or with voices, even with force."""
        model_id, voices = entry.model_id, sorted(entry.attached)
        if entry.state != "resident":
            raise FailedPrecondition(f"model {model_id!r} is not resident (state: {entry.state})")
        if entry.users:
            raise ModelInUse(
                f"model {model_id!r} is in use (refcount {entry.users})",
                hint="end the sessions using it first; force does not override this",
            )
        if voices:
            raise FailedPrecondition(
                f"model {model_id!r} has LoRA voices attached: {', '.join(voices)}",
                hint=f"unload them first (`duplexctl models unload {voices[0]}`)",
            )
        if entry.pinned and not force:
            raise FailedPrecondition(
                f"model {model_id!r} is pinned", hint="unpin it first, or unload with force"
            )
        if model_id == self.policy.default_id and not force:
            raise FailedPrecondition(
                f"model {model_id!r} is the default model", hint="unload with force to do it anyway"
            )

    def check_admission(self, in_flight: int, *, bounded: bool) -> None:
        """A new load: "busy" beyond max_parallel_loads running + max_pending_loads waiting,
        rather than an unbounded queue (startup's preloads are not bounded)."""
        cfg = self.config
        if bounded and in_flight >= cfg.max_parallel_loads + cfg.max_pending_loads:
            raise BusyError(
                f"{in_flight} model loads in flight (max_parallel_loads="
                f"{cfg.max_parallel_loads}, max_pending_loads={cfg.max_pending_loads})",
                hint="retry shortly",
            )

    # -- making room for a load ------------------------------------------------------------

    def cap_victim(self, entry: Entry) -> Entry | None:
        """The model to evict before `entry` may load under resident_cap (None: it fits).
        Honours min residency: a young model is kept. Refuses if nothing may go."""
        if occupancy(self.entries.values()) <= self.config.resident_cap:
            return None
        now = self._clock()
        victim = self.policy.lru_victim(self.entries.values(), now, honour_min_residency=True)
        if victim is None:
            raise self._cap_refusal(entry, now)
        return victim

    def memory_victim(self, entry: Entry, measured_free: int) -> Entry | None:
        """The model to evict before `entry` fits in memory (None: it fits), given the free
        bytes measured on its device now. Ignores min residency: refusing a load is worse than
        reloading a young model. Refuses if nothing may go."""
        needed, free = self._memory_need(entry, measured_free)
        if free >= needed:
            return None
        victim = self.policy.lru_victim(
            self.entries.values(), self._clock(), honour_min_residency=False
        )
        if victim is None:
            raise self._memory_refusal(entry, self.device_for(entry), needed, free, 0)
        return victim

    def plan_room(self, entry: Entry, measured_free: int) -> list[tuple[Entry, str]]:
        """Every model to evict, in order and with why ("resident_cap" or "memory"), so that
        `entry` can load; or ResourceExhausted when evicting all that may go would not make
        room. Only decides: a refused load evicts nothing. Memory counts what each victim
        measured when it loaded; the manager measures again after evicting."""
        now, cap = self._clock(), self.config.resident_cap
        plan: list[tuple[Entry, str]] = []
        gone: set[str] = set()

        def take(victim: Entry, why: str) -> None:
            plan.append((victim, why))
            gone.add(victim.model_id)

        occupied = occupancy(self.entries.values())
        while occupied > cap:
            victim = self.policy.lru_victim(
                self.entries.values(), now, honour_min_residency=True, gone=gone
            )
            if victim is None:
                raise self._cap_refusal(entry, now)
            take(victim, "resident_cap")
            if not victim.meta.is_lora:  # a voice frees no slot, but may free its base
                occupied -= 1
        device = self.device_for(entry)
        needed, free = self._memory_need(entry, measured_free)
        freed = sum(_measured(victim) for victim, _ in plan)
        while free + freed < needed:
            victim = self.policy.lru_victim(
                self.entries.values(), now, honour_min_residency=False, gone=gone
            )
            if victim is None:
                raise self._memory_refusal(entry, device, needed, free, freed)
            take(victim, "memory")
            freed += _measured(victim)
        return plan

    def _memory_need(self, entry: Entry, measured_free: int) -> tuple[int, int]:
        """(bytes `entry` needs, bytes free for it) on its device."""
        device = self.device_for(entry)
        needed = estimate_bytes(entry.meta, device)
        # Other loads past this check have not grown the process yet: count their estimates
        # as taken, or two parallel loads could each see the same free memory.
        reserved = reserved_bytes(self.entries.values(), device, besides=entry)
        return needed, measured_free - self.config.memory_headroom_mb * _MIB - reserved

    def _cap_refusal(self, entry: Entry, now: float) -> ResourceExhausted:
        kept = ", ".join(
            f"{e.model_id} ({self.policy.why_kept(e, now)})"
            for e in self.entries.values()
            if e.state == "resident"
        )
        return ResourceExhausted(
            f"cannot load {entry.model_id}: resident_cap={self.config.resident_cap} reached and "
            f"no model can be evicted: {kept}",
            hint="end sessions, unpin or unload a model, or raise resident_cap",
        )

    def _memory_refusal(
        self, entry: Entry, device: str, needed: int, free: int, evictable: int
    ) -> ResourceExhausted:
        if evictable:
            short = f"; evicting every idle model would free only {evictable / _MIB:.0f} MiB"
        else:
            short = " and no idle model to evict"
        return ResourceExhausted(
            f"not enough memory on {device} to load {entry.model_id}: needs "
            f"{needed / _MIB:.0f} MiB, {max(free, 0) / _MIB:.0f} MiB free (after "
            f"{self.config.memory_headroom_mb} MiB headroom){short}",
            hint="unload or unpin a model, end sessions, or give the worker more memory",
        )

    # -- clocks, leases, eviction ----------------------------------------------------------

    def touch(self, entry: Entry) -> None:
        entry.last_used, entry.last_used_unix = self._clock(), self._wall()

    def take(self, entry: Entry) -> None:
        """A lease starts: one more user."""
        entry.refcount += 1
        self.touch(entry)

    def release(self, entry: Entry) -> None:
        """A lease ends (the `Lease`'s callback)."""
        entry.refcount -= 1
        if entry.refcount == 0:
            self.touch(entry)  # the idle clock starts now

    def mark_resident(self, entry: Entry, handle: ModelHandle, load_ms: float) -> None:
        entry.mark_resident(handle, load_ms, self._clock(), self._wall())

    def expired(self, now: float) -> list[Entry]:
        """The models the evictor unloads now (idle past the TTL, or dropped)."""
        return [e for e in self.entries.values() if self.policy.expired(e, now)]

    def shutdown_order(self) -> list[Entry]:
        """LoRA voices first: each keeps its base resident."""
        return sorted(self.entries.values(), key=lambda e: not e.meta.is_lora)

    # -- LoRA voices and unloads -----------------------------------------------------------

    def attach(self, voice: Entry, base: Entry) -> None:
        base.attached.add(voice.model_id)  # from here the base cannot be evicted

    def detach(self, voice: Entry) -> None:
        """A LoRA voice left (or never arrived): its base's idle clock may start."""
        base = self.entries.get(voice.meta.base_model or "")
        if base is not None and voice.model_id in base.attached:
            base.attached.discard(voice.model_id)
            self.touch(base)

    def unloaded(self, entry: Entry) -> None:
        """`entry`'s handle is closed: forget it, free its base, drop it if the catalog did."""
        entry.forget_handle()
        self.detach(entry)
        if entry.dropped:
            self.entries.pop(entry.model_id, None)

    def replace_catalog(self, catalog: Catalog) -> None:
        """RELOAD: new entries appear, resident ones keep serving, dropped ones go once idle."""
        self.entries, self.catalog = merge_catalog(self.entries, catalog), catalog

    # -- reading ---------------------------------------------------------------------------

    def device_for(self, entry: Entry) -> str:
        return entry.device or self.device

    def status(self, e: Entry, blocker: Blocker | None = None) -> ModelStatus:
        """`e`'s row in ListModels; `blocker`: why it cannot load now (see `readiness`)."""
        meta, device, now = e.meta, self.device_for(e), self._clock()
        estimate = estimate_bytes(meta, device)
        measured = e.handle.memory_bytes if e.handle is not None and e.state == "resident" else None
        state, word, reason = _state_words(e, blocker)
        return ModelStatus(
            model_id=meta.model_id,
            family=meta.family,
            state=state,
            status=word,
            pinned=e.pinned,
            is_default=meta.model_id == self.policy.default_id,
            refcount=e.refcount,
            last_used_unix=e.last_used_unix,
            ttl_remaining_ms=self.policy.ttl_remaining_ms(e, now),
            memory_bytes=estimate if measured is None else measured,
            estimated_memory_bytes=estimate,
            load_ms=e.load_ms,
            loaded_unix=e.loaded_unix,
            device=device,
            tags=meta.tags,
            languages=meta.languages,
            native_sr=meta.native_sr,
            unavailable_reason=reason,
            base_model=meta.base_model,
            adapters=tuple(sorted(e.attached)),
        )


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


def _state_words(e: Entry, blocker: Blocker | None) -> tuple[ModelState, str, str | None]:
    """(state, STATE word, reason) as ListModels reports them. A model that cannot load here
    reports "unavailable" (the router then passes it by) with the blocker's word and reason;
    a remembered failure keeps its reason."""
    if e.state in ("resident", "loading", "unloading"):
        return e.state, e.state, e.error
    if e.meta.unavailable:
        return "unavailable", UNAVAILABLE, e.meta.unavailable
    if blocker is not None:
        return "unavailable", blocker.word, blocker.reason
    if e.state == "unavailable":  # the load itself found its weights missing (half a release)
        return e.state, NOT_PULLED, e.error
    return e.state, NOT_LOADED, e.error


def merge_catalog(entries: dict[str, Entry], catalog: Catalog) -> dict[str, Entry]:
    """Entries for a RELOADed catalog, in its order; then dropped models still in memory.

    Remembered load errors are forgotten: a reload usually follows a fix (pulled weights).
    """
    old, fresh = dict(entries), {}
    for meta in catalog:
        entry = old.pop(meta.model_id, None) or new_entry(meta)
        entry.meta, entry.dropped = meta, False
        if entry.state in ("not_loaded", "unavailable"):
            entry.state, entry.error = "not_loaded", None
            if meta.unavailable:
                entry.state, entry.error = "unavailable", meta.unavailable
        fresh[meta.model_id] = entry
    for model_id, entry in old.items():
        if entry.state in ("loading", "resident", "unloading"):
            entry.dropped = True
            fresh[model_id] = entry
    return fresh


def _measured(e: Entry) -> int:
    """What unloading `e` gives back, as its handle measured it."""
    return e.handle.memory_bytes if e.handle is not None else 0


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
