"""TEST DOUBLES for the Model Manager's unit tests — not engines.

These stand in for real engines only in the manager's unit tests, so the scheduling logic
(leases, TTL, LRU cap, memory pre-check, parallel and coalesced loads) runs in milliseconds and
deterministically. Integration tests use real Piper/espeak adapters.

- `FakeMemory`: a pretend memory pool; handles take from it, `available` is a memory probe.
- `FakeLoader`: a `LoadFn`. The manager calls it on a worker thread, so a test holds a load
  open with a `threading.Event` gate (`hold` / `release`), counts calls per model, and can make a
  model's load raise (`fail`).
- `FakeLoader.attach`: an `AttachFn` for LoRA voices on a fake base.
- `FakeHandle`: what `FakeLoader` returns; records `close()` and gives its memory back.
- `ManualClock`: a clock that moves only when told (`advance(ms)`).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from duplexd.tts.catalog import ModelMeta

__all__ = ["FakeHandle", "FakeLoader", "FakeMemory", "ManualClock"]

# A gated load or close gives up after this long, so a failing test cannot hang the suite on a
# worker thread that nobody releases.
GATE_TIMEOUT_S = 10.0


class ManualClock:
    """Monotonic seconds that move only on `advance`; pass it as `clock` (and `wall_clock`)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += ms / 1000


class FakeMemory:
    """A memory pool of `total_bytes`; `available` has the signature of a memory probe."""

    def __init__(self, total_bytes: int) -> None:
        self.total_bytes = total_bytes
        self.used_bytes = 0
        self._lock = threading.Lock()

    def allocate(self, n: int) -> None:
        with self._lock:
            self.used_bytes += n

    def free(self, n: int) -> None:
        with self._lock:
            self.used_bytes -= n

    def available(self, device: str = "cpu") -> int:
        return self.total_bytes - self.used_bytes


class FakeHandle:
    """A "loaded model": holds `memory_bytes` of a `FakeMemory` until closed."""

    def __init__(
        self,
        model_id: str,
        memory_bytes: int,
        memory: FakeMemory | None = None,
        before_close: Callable[[], None] | None = None,
    ) -> None:
        self.model_id = model_id
        self.memory_bytes = memory_bytes
        self.close_calls = 0
        self._memory = memory
        self._before_close = before_close

    @property
    def closed(self) -> bool:
        return self.close_calls > 0

    def close(self) -> None:
        if self._before_close is not None:
            self._before_close()
        if self._memory is not None and not self.closed:
            self._memory.free(self.memory_bytes)
        self.close_calls += 1


class FakeLoader:
    """A `LoadFn` for tests. A handle uses `memory_bytes[model_id]`, else the catalog estimate."""

    def __init__(
        self, memory: FakeMemory | None = None, *, memory_bytes: dict[str, int] | None = None
    ) -> None:
        self.memory = memory
        self.memory_bytes = dict(memory_bytes or {})
        self.calls: Counter[str] = Counter()
        self.handles: dict[str, list[FakeHandle]] = {}
        self.active = 0  # loads running right now
        self.max_active = 0  # the most that ever ran at once
        self._lock = threading.Lock()
        self._load_gates: dict[str, threading.Event] = {}
        self._close_gates: dict[str, threading.Event] = {}
        self._failures: dict[str, BaseException] = {}
        self.attached: list[tuple[str, str]] = []

    # -- steering ---------------------------------------------------------------------------

    def hold(self, model_id: str) -> None:
        """Loads of `model_id` block (on their thread) until `release(model_id)`."""
        self._load_gates[model_id] = threading.Event()

    def release(self, model_id: str) -> None:
        self._load_gates.pop(model_id, threading.Event()).set()

    def hold_close(self, model_id: str) -> None:
        """Closing `model_id`'s handles blocks until `release_close(model_id)`."""
        self._close_gates[model_id] = threading.Event()

    def release_close(self, model_id: str) -> None:
        self._close_gates.pop(model_id, threading.Event()).set()

    def release_all(self) -> None:
        for model_id in list(self._load_gates):
            self.release(model_id)
        for model_id in list(self._close_gates):
            self.release_close(model_id)

    def fail(self, model_id: str, exc: BaseException | None) -> None:
        """Loads of `model_id` raise `exc` (None: load normally again)."""
        if exc is None:
            self._failures.pop(model_id, None)
        else:
            self._failures[model_id] = exc

    # -- the LoadFn -------------------------------------------------------------------------

    def __call__(self, meta: ModelMeta) -> FakeHandle:
        model_id = meta.model_id
        with self._lock:
            self.calls[model_id] += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            _wait(self._load_gates.get(model_id), f"load of {model_id}")
            if model_id in self._failures:
                raise self._failures[model_id]
            return self._new_handle(meta)
        finally:
            with self._lock:
                self.active -= 1

    def attach(self, base: object, meta: ModelMeta) -> FakeHandle:
        """An `AttachFn`: a LoRA voice on `base` (a FakeHandle this loader made); recorded in
        `attached` as (base id, voice id); a `fail(voice id, exc)` makes it raise."""
        assert isinstance(base, FakeHandle) and not base.closed, "attach needs a live base"
        with self._lock:
            self.calls[meta.model_id] += 1
        _wait(self._load_gates.get(meta.model_id), f"attach of {meta.model_id}")
        if meta.model_id in self._failures:
            raise self._failures[meta.model_id]
        self.attached.append((base.model_id, meta.model_id))
        return self._new_handle(meta)

    def _new_handle(self, meta: ModelMeta) -> FakeHandle:
        size = self.memory_bytes.get(meta.model_id, meta.estimated_memory_bytes)
        model_id = meta.model_id
        handle = FakeHandle(
            model_id,
            size,
            self.memory,
            lambda: _wait(self._close_gates.get(model_id), f"close of {model_id}"),
        )
        if self.memory is not None:
            self.memory.allocate(size)
        self.handles.setdefault(model_id, []).append(handle)
        return handle


def _wait(gate: threading.Event | None, what: str) -> None:
    if gate is not None and not gate.wait(GATE_TIMEOUT_S):
        raise TimeoutError(f"{what} was held and never released")
