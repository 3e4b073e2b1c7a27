"""What the Model Manager reports and hands out: a model's state, its row in ListModels
(`ModelStatus`), a load's result, the protocol of the handle a loader returns, and the
signatures of the loader and the other blocking calls the manager is given.

Plain values with no rules attached (those are in `duplexd.tts.residency`); import them from
`duplexd.tts.manager`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from duplexd.tts.catalog import ModelMeta

__all__ = [
    "AttachFn",
    "DeviceFn",
    "LoadFn",
    "LoadOutcome",
    "LoadResult",
    "ModelHandle",
    "ModelState",
    "ModelStatus",
    "RunBlocking",
]

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


T = TypeVar("T")

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
