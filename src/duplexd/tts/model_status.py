"""What the Model Manager reports and hands out: a model's state, its row in ListModels
(`ModelStatus`), a load's result, and the protocol of the handle a loader returns.

Plain values with no rules attached (those are in `duplexd.tts.residency`); import them from
`duplexd.tts.manager`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["LoadOutcome", "LoadResult", "ModelHandle", "ModelState", "ModelStatus"]

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


@dataclass(frozen=True)
class ModelStatus:
    """One row of ListModels."""

    model_id: str
    family: str
    state: ModelState
    # STATE as a user reads it: resident, loading, unloading, not loaded, or why it cannot
    # load here: not pulled, needs extra X, needs F env, unavailable (`duplexd.tts.readiness`)
    status: str
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
    """What one load produced, shared by every caller that coalesced onto it."""

    load_ms: float
    evicted: tuple[str, ...]
