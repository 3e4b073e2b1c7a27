"""One model's entry in the Model Manager's table, and the policy over entries.

- `Entry`: what is known about one model (its state, handle, users, pin and clocks).
- `Policy`: which resident model may go, and when: idle past ``ttl_ms`` and resident past
  ``min_residency_ms``, least recently used first under ``resident_cap``; pinned, default,
  leased models and bases with LoRA voices attached stay.

The table of entries, the leases and the refusals are in `duplexd.tts.residency`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from duplexd.errors import WeightsMissing
from duplexd.tts.catalog import ModelMeta
from duplexd.tts.model_status import LoadOutcome, ModelHandle, ModelState


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

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Count the caller as a user while it waits for the model and takes its lease."""
        self.holds += 1
        try:
            yield
        finally:
            self.holds -= 1

    def mark_resident(self, handle: ModelHandle, load_ms: float, now: float, wall: float) -> None:
        self.handle, self.state, self.load_ms, self.error = handle, "resident", load_ms, None
        self.loaded_at = self.last_used = now
        self.loaded_unix = self.last_used_unix = wall

    def mark_failed(self, exc: Exception, *, sticky: bool = True) -> None:
        """Weights the load found missing stay unavailable (until a RELOAD or a load that
        succeeds); other failures may be retried. Not `sticky`: the check before the load
        refused it, and says so again (or not) in every listing."""
        sticky = sticky and isinstance(exc, WeightsMissing)
        self.state = "unavailable" if sticky else "not_loaded"
        self.error = str(exc)

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

    def kept_because(self, e: Entry, gone: AbstractSet[str] = frozenset()) -> str | None:
        """Why `e` must stay whatever the clock says; None if it may go once idle long enough.
        `gone`: ids a plan has already chosen to evict (a base whose voices all go may go)."""
        if e.state != "resident":
            return e.state
        if e.users:
            return f"in use by {e.users} lease(s)"
        if e.attached - gone:
            return "LoRA voices attached: " + ", ".join(sorted(e.attached - gone))
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
        self,
        entries: Iterable[Entry],
        now: float,
        *,
        honour_min_residency: bool,
        gone: AbstractSet[str] = frozenset(),
    ) -> Entry | None:
        """The idle model to unload first: dropped ones, then least recently used (`gone`:
        ids already chosen, skipped)."""
        candidates = [
            e
            for e in entries
            if e.model_id not in gone
            and self.kept_because(e, gone) is None
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
