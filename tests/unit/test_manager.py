"""The Model Manager's scheduling rules, driven through the fakes in duplexd.devkit.models.

Real threads run the FakeLoader (the manager's default `asyncio.to_thread`), so the gates really
hold loads open; time is a ManualClock, so TTL and residency take no wall time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from duplexd.config import ModelManagerConfig
from duplexd.devkit.models import FakeLoader, FakeMemory, ManualClock
from duplexd.errors import (
    BusyError,
    FailedPrecondition,
    ModelInUse,
    ModelLoadError,
    ModelNotFound,
    ResourceExhausted,
    WeightsMissing,
)
from duplexd.tts.catalog import Catalog, ModelMeta
from duplexd.tts.manager import Lease, ModelManager

MIB = 2**20
WALL_OFFSET = 1_700_000_000.0


def meta(model_id: str, mb: int = 100) -> ModelMeta:
    return ModelMeta(
        model_id=model_id,
        family="fake",
        native_sr=22050,
        estimated_memory_mb=mb,
        tags=("test",),
        languages=("en",),
    )


def catalog(*ids: str, mb: int = 100) -> Catalog:
    return Catalog({m: meta(m, mb) for m in ids})


@dataclass
class Harness:
    manager: ModelManager
    loader: FakeLoader
    memory: FakeMemory
    clock: ManualClock
    events: list[tuple[str, str]] = field(default_factory=list)

    def state(self, model_id: str) -> str:
        return self.manager.status(model_id).state


BASE_CONFIG: dict[str, Any] = {
    "default_model_id": "d",
    "ttl_ms": 1000,
    "min_residency_ms": 500,
    "evict_check_interval_ms": 60_000,
    "resident_cap": 10,
    "max_parallel_loads": 1,
    "max_pending_loads": 4,
    "memory_headroom_mb": 0,
}


@asynccontextmanager
async def harness(
    *,
    ids: tuple[str, ...] = ("d", "a", "b", "c"),
    mb: int = 100,
    memory_mb: int = 10_000,
    start: bool = True,
    load_fn: Callable[..., Any] | None = None,
    models: Catalog | None = None,
    **config: Any,
) -> AsyncIterator[Harness]:
    memory = FakeMemory(memory_mb * MIB)
    loader = FakeLoader(memory)
    clock = ManualClock()
    manager = ModelManager(
        models or catalog(*ids, mb=mb),
        ModelManagerConfig(**{**BASE_CONFIG, **config}),
        load_fn or loader,
        clock=clock,
        wall_clock=lambda: WALL_OFFSET + clock.now,
        memory_probe=memory.available,
    )
    h = Harness(manager, loader, memory, clock)
    manager.subscribe(lambda event, model_id: h.events.append((event, model_id)))
    try:
        if start:
            await manager.start()
        yield h
    finally:
        loader.release_all()  # a failed assertion must not leave a thread gated
        await manager.aclose()


async def wait_until(cond: Callable[[], bool]) -> None:
    """Poll a condition that a worker thread makes true (no event to await across threads)."""
    async with asyncio.timeout(2.0):
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.001)


# -- startup -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_start_loads_default_then_preloads() -> None:
    async with harness(preload_model_ids=["a", "d", "b"]) as h:
        assert h.manager.resident_ids() == ["d", "a", "b"]
        assert h.loader.calls == {"d": 1, "a": 1, "b": 1}
        d = h.manager.status("d")
        assert d.is_default and d.ttl_remaining_ms is None and d.refcount == 0
        a = h.manager.status("a")
        assert a.ttl_remaining_ms == 1000 and a.memory_bytes == 100 * MIB
        assert a.loaded_unix == WALL_OFFSET + h.clock.now
        assert [s.model_id for s in h.manager.list()] == ["d", "a", "b", "c"]
        assert h.manager.status("c").state == "not_loaded"


@pytest.mark.asyncio
async def test_failing_default_raises() -> None:
    with pytest.raises(ModelLoadError, match="failed to load d: boom"):
        async with harness(start=False) as h:
            h.loader.fail("d", RuntimeError("boom"))
            try:
                await h.manager.start()
            finally:
                assert h.state("d") == "not_loaded"
                assert "boom" in (h.manager.status("d").unavailable_reason or "")


@pytest.mark.asyncio
async def test_missing_default_weights_raise_and_mark_unavailable() -> None:
    async with harness(start=False) as h:
        h.loader.fail("d", WeightsMissing("weights for 'd' not found"))
        with pytest.raises(WeightsMissing):
            await h.manager.start()
        assert h.state("d") == "unavailable"


@pytest.mark.asyncio
async def test_unknown_default_raises_model_not_found() -> None:
    async with harness(start=False, default_model_id="dd") as h:
        with pytest.raises(ModelNotFound, match="default model 'dd'") as info:
            await h.manager.start()
        assert "did you mean d" in str(info.value)


@pytest.mark.asyncio
async def test_failing_preload_is_reported_not_fatal() -> None:
    async with harness(start=False, preload_model_ids=["a", "nope", "b"]) as h:
        h.loader.fail("a", RuntimeError("bad file"))
        await h.manager.start()
        assert h.manager.resident_ids() == ["d", "b"]
        assert h.manager.status("a").unavailable_reason == "failed to load a: bad file"


@pytest.mark.asyncio
async def test_preloads_run_under_the_load_semaphore() -> None:
    async with harness(start=False, max_parallel_loads=2, preload_model_ids=["a", "b", "c"]) as h:
        for model_id in ("a", "b", "c"):
            h.loader.hold(model_id)
        starting = asyncio.create_task(h.manager.start())
        await wait_until(lambda: h.loader.active == 2)
        await asyncio.sleep(0.02)
        assert h.loader.active == 2
        assert {h.state(m) for m in "abc"} == {"loading"}
        h.loader.release_all()
        await starting
        assert h.loader.max_active == 2
        assert h.manager.resident_ids() == ["d", "a", "b", "c"]


# -- TTL, residency, refcounts -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_ttl_evicts_idle_models_but_not_the_default() -> None:
    async with harness() as h:
        await h.manager.load("a")
        h.clock.advance(990)
        assert await h.manager.evict_idle() == []
        assert h.manager.status("a").ttl_remaining_ms == 10
        h.clock.advance(20)
        assert await h.manager.evict_idle() == ["a"]
        assert ("evicted", "a") in h.events
        h.clock.advance(1_000_000)
        assert await h.manager.evict_idle() == []
        assert h.manager.resident_ids() == ["d"]


@pytest.mark.asyncio
async def test_min_residency_outlasts_a_short_ttl() -> None:
    async with harness(ttl_ms=100, min_residency_ms=1000) as h:
        await h.manager.load("a")
        h.clock.advance(500)
        assert await h.manager.evict_idle() == []
        assert h.manager.status("a").ttl_remaining_ms == 500
        h.clock.advance(510)
        assert await h.manager.evict_idle() == ["a"]


@pytest.mark.asyncio
async def test_idle_clock_starts_at_refcount_zero() -> None:
    async with harness() as h:
        lease = await h.manager.acquire("a")
        second = await h.manager.acquire("a")
        assert h.manager.status("a").refcount == 2
        h.clock.advance(5000)
        assert await h.manager.evict_idle() == []
        assert h.manager.status("a").ttl_remaining_ms is None
        lease.release()
        lease.release()  # idempotent
        assert h.manager.status("a").refcount == 1
        async with second:
            pass
        status = h.manager.status("a")
        assert status.refcount == 0 and status.ttl_remaining_ms == 1000
        assert status.last_used_unix == WALL_OFFSET + h.clock.now
        h.clock.advance(1010)
        assert await h.manager.evict_idle() == ["a"]


@pytest.mark.asyncio
async def test_unload_refuses_a_leased_model_even_with_force() -> None:
    async with harness() as h:
        lease = await h.manager.acquire("a")
        for force in (False, True):
            with pytest.raises(ModelInUse, match="refcount 1"):
                await h.manager.unload("a", force=force)
        lease.release()
        assert await h.manager.unload("a") == 100 * MIB
        assert ("unloaded", "a") in h.events


@pytest.mark.asyncio
async def test_unload_preconditions() -> None:
    async with harness() as h:
        with pytest.raises(FailedPrecondition, match="not resident"):
            await h.manager.unload("b")
        with pytest.raises(ModelNotFound, match="unknown model 'zz'"):
            await h.manager.unload("zz")
        with pytest.raises(FailedPrecondition, match="default") as info:
            await h.manager.unload("d")
        assert "force" in str(info.value)
        await h.manager.load("a", pin=True)
        with pytest.raises(FailedPrecondition, match="pinned") as info:
            await h.manager.unload("a")
        assert type(info.value) is FailedPrecondition and "unpin" in str(info.value)
        assert await h.manager.unload("a", force=True) == 100 * MIB
        assert await h.manager.unload("d", force=True) == 100 * MIB
        assert h.manager.resident_ids() == []


@pytest.mark.asyncio
async def test_pin_and_unpin() -> None:
    async with harness() as h:
        result = await h.manager.load("a", pin=True)
        assert result.status.pinned and result.status.ttl_remaining_ms is None
        h.clock.advance(100_000)
        assert await h.manager.evict_idle() == []
        status = h.manager.set_pinned("a", False)
        assert not status.pinned and status.ttl_remaining_ms == 0
        assert await h.manager.evict_idle() == ["a"]
        assert ("pinned", "a") in h.events and ("unpinned", "a") in h.events
        with pytest.raises(FailedPrecondition, match="not resident"):
            h.manager.set_pinned("a", True)
        again = await h.manager.load("d", pin=True)
        assert again.already_resident and again.status.pinned and again.load_ms == 0.0


# -- the resident cap --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_cap_evicts_least_recently_used_idle_model() -> None:
    async with harness(resident_cap=3, min_residency_ms=0) as h:
        await h.manager.load("a")
        h.clock.advance(10)
        await h.manager.load("b")
        h.clock.advance(10)
        async with await h.manager.acquire("a"):
            pass
        h.clock.advance(10)
        result = await h.manager.load("c")
        assert result.evicted == ["b"] and not result.already_resident
        assert h.manager.resident_ids() == ["d", "a", "c"]
        assert ("evicted", "b") in h.events


@pytest.mark.asyncio
async def test_cap_refuses_when_every_resident_model_is_kept() -> None:
    async with harness(resident_cap=2, min_residency_ms=1000) as h:
        lease = await h.manager.acquire("a")
        with pytest.raises(ResourceExhausted, match="resident_cap=2") as info:
            await h.manager.load("b")
        assert "d (default model)" in str(info.value)
        assert "a (in use by 1 lease(s))" in str(info.value)
        lease.release()
        await h.manager.load("a", pin=True)
        with pytest.raises(ResourceExhausted, match=r"a \(pinned\)"):
            await h.manager.load("b")
        h.manager.set_pinned("a", False)
        with pytest.raises(ResourceExhausted, match="min_residency"):
            await h.manager.load("b")  # a is too young to be evicted for the cap
        assert h.loader.calls["b"] == 0
        h.clock.advance(1000)
        assert (await h.manager.load("b")).evicted == ["a"]


# -- concurrency -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_concurrent_requests_share_one_load() -> None:
    async with harness() as h:
        h.loader.hold("a")
        loading = asyncio.create_task(h.manager.load("a"))
        acquiring = asyncio.create_task(h.manager.acquire("a"))
        await wait_until(lambda: h.loader.active == 1)
        assert h.state("a") == "loading"
        h.loader.release("a")
        result, lease = await asyncio.gather(loading, acquiring)
        assert h.loader.calls["a"] == 1
        assert not result.already_resident
        assert isinstance(lease, Lease) and lease.handle is h.loader.handles["a"][0]
        assert h.manager.status("a").refcount == 1
        lease.release()


@pytest.mark.asyncio
async def test_coalesced_waiters_all_get_the_load_error() -> None:
    async with harness() as h:
        h.loader.hold("a")
        h.loader.fail("a", RuntimeError("corrupt"))
        waiters = [asyncio.create_task(h.manager.load("a")) for _ in range(3)]
        await wait_until(lambda: h.loader.active == 1)
        h.loader.release("a")
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, ModelLoadError) for r in results)
        assert h.loader.calls["a"] == 1


@pytest.mark.asyncio
async def test_busy_when_pending_loads_exceed_the_bound() -> None:
    async with harness(max_parallel_loads=1, max_pending_loads=1) as h:
        h.loader.hold("a")
        h.loader.hold("b")
        first = asyncio.create_task(h.manager.load("a"))
        second = asyncio.create_task(h.manager.load("b"))
        await wait_until(lambda: h.loader.active == 1)
        with pytest.raises(BusyError, match="max_pending_loads=1"):
            await h.manager.load("c")
        same = asyncio.create_task(h.manager.acquire("a"))  # joins a's load: not a new one
        h.loader.release_all()
        _, _, lease = await asyncio.gather(first, second, same)
        lease.release()
        assert h.loader.calls == {"d": 1, "a": 1, "b": 1}
        assert h.loader.max_active == 1
        await h.manager.load("c")  # the queue drained


@pytest.mark.asyncio
async def test_cancelled_waiter_does_not_cancel_the_shared_load() -> None:
    async with harness() as h:
        h.loader.hold("a")
        impatient = asyncio.create_task(h.manager.acquire("a"))
        await wait_until(lambda: h.loader.active == 1)
        impatient.cancel()
        patient = asyncio.create_task(h.manager.load("a"))
        h.loader.release("a")
        assert not (await patient).already_resident
        assert impatient.cancelled()
        assert h.manager.status("a").refcount == 0


# -- memory ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_memory_precheck_evicts_idle_first_then_refuses() -> None:
    async with harness(mb=300, memory_mb=1000, memory_headroom_mb=50, min_residency_ms=60_000) as h:
        await h.manager.load("a")
        h.clock.advance(1)
        await h.manager.load("b")
        assert h.memory.available() == 100 * MIB
        result = await h.manager.load("c")  # needs 300, 50 free: evict a despite min residency
        assert result.evicted == ["a"]
        assert h.manager.resident_ids() == ["d", "b", "c"]
        leases = [await h.manager.acquire("b"), await h.manager.acquire("c")]
        with pytest.raises(ResourceExhausted, match="needs 300 MiB, 50 MiB free") as info:
            await h.manager.load("a")
        assert "50 MiB headroom" in str(info.value) and info.value.hint
        assert h.loader.calls["a"] == 1  # refused before load_fn
        assert ("load_failed", "a") in h.events
        assert "not enough memory" in (h.manager.status("a").unavailable_reason or "")
        for lease in leases:
            lease.release()


@pytest.mark.asyncio
async def test_parallel_loads_reserve_their_estimates() -> None:
    async with harness(mb=400, memory_mb=1000, max_parallel_loads=2) as h:
        h.loader.hold("a")
        first = asyncio.create_task(h.manager.load("a"))
        await wait_until(lambda: h.loader.active == 1)
        # 600 MiB free by the probe, but a's 400 are spoken for: b would overcommit.
        with pytest.raises(ResourceExhausted, match="needs 400 MiB, 200 MiB free"):
            await h.manager.load("b")
        h.loader.release("a")
        await first
        assert h.loader.calls["b"] == 0


@pytest.mark.asyncio
async def test_unload_gives_memory_back() -> None:
    async with harness() as h:
        await h.manager.load("a")
        assert h.memory.used_bytes == 200 * MIB
        assert await h.manager.unload("a") == 100 * MIB
        assert h.memory.used_bytes == 100 * MIB
        assert h.loader.handles["a"][0].closed
        status = h.manager.status("a")
        assert status.state == "not_loaded" and status.memory_bytes == 100 * MIB
        assert status.loaded_unix is None


@pytest.mark.asyncio
async def test_acquire_during_unload_waits_then_reloads() -> None:
    async with harness() as h:
        await h.manager.load("a")
        h.loader.hold_close("a")
        unloading = asyncio.create_task(h.manager.unload("a"))
        await wait_until(lambda: h.state("a") == "unloading")
        acquiring = asyncio.create_task(h.manager.acquire("a"))
        await asyncio.sleep(0.01)
        assert not acquiring.done()
        h.loader.release_close("a")
        assert await unloading == 100 * MIB
        lease = await acquiring
        assert h.loader.calls["a"] == 2 and lease.handle is h.loader.handles["a"][1]
        lease.release()


# -- failures, timing, events ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_load_failure_is_remembered_until_a_load_succeeds() -> None:
    async with harness() as h:
        h.loader.fail("a", RuntimeError("corrupt"))
        with pytest.raises(ModelLoadError, match="failed to load a: corrupt"):
            await h.manager.acquire("a")
        status = h.manager.status("a")
        assert status.state == "not_loaded" and status.unavailable_reason == (
            "failed to load a: corrupt"
        )
        h.loader.fail("a", None)
        await h.manager.load("a")
        assert h.manager.status("a").unavailable_reason is None
        h.loader.fail("b", WeightsMissing("weights for 'b' not found"))
        with pytest.raises(WeightsMissing):
            await h.manager.load("b")
        assert h.state("b") == "unavailable"
        assert [e for e in h.events if e[1] in "ab"] == [
            ("loading", "a"),
            ("load_failed", "a"),
            ("loading", "a"),
            ("loaded", "a"),
            ("loading", "b"),
            ("load_failed", "b"),
        ]


@pytest.mark.asyncio
async def test_load_ms_uses_the_injected_clock() -> None:
    clock_holder: list[ManualClock] = []

    def slow_loader(m: ModelMeta) -> Any:
        clock_holder[0].advance(250)
        return loader(m)

    loader = FakeLoader()
    async with harness(start=False, load_fn=slow_loader) as h:
        clock_holder.append(h.clock)
        result = await h.manager.load("a")
        assert result.load_ms == pytest.approx(250)
        assert h.manager.status("a").load_ms == pytest.approx(250)


@pytest.mark.asyncio
async def test_subscribe_and_unsubscribe() -> None:
    async with harness() as h:
        seen: list[tuple[str, str]] = []
        unsubscribe = h.manager.subscribe(lambda e, m: seen.append((e, m)))

        def crash(event: str, model_id: str) -> None:
            raise RuntimeError("broken subscriber")

        broken = h.manager.subscribe(crash)  # it harms no one
        await h.manager.load("a", pin=True)
        broken()
        h.manager.set_pinned("a", False)
        await h.manager.unload("a")
        unsubscribe()
        unsubscribe()
        await h.manager.load("b")
        assert seen == [
            ("loading", "a"),
            ("loaded", "a"),
            ("pinned", "a"),
            ("unpinned", "a"),
            ("unloaded", "a"),
        ]


# -- reload, evictor, shutdown -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_replace_catalog_keeps_residents_and_drops_them_once_idle() -> None:
    async with harness() as h:
        h.loader.fail("b", RuntimeError("bad"))
        with pytest.raises(ModelLoadError):
            await h.manager.load("b")
        lease = await h.manager.acquire("a")
        h.manager.replace_catalog(catalog("d", "b", "e"))
        assert [s.model_id for s in h.manager.list()] == ["d", "b", "e", "a"]
        assert h.manager.status("b").unavailable_reason is None  # a reload forgets errors
        assert h.manager.status("a").state == "resident"
        with pytest.raises(ModelNotFound):
            await h.manager.acquire("a")
        assert await h.manager.evict_idle() == []  # still leased
        lease.release()
        assert h.manager.status("a").ttl_remaining_ms == 0
        assert await h.manager.evict_idle() == ["a"]
        assert [s.model_id for s in h.manager.list()] == ["d", "b", "e"]
        with pytest.raises(ModelNotFound):
            h.manager.status("a")
        await h.manager.load("e")
        assert h.manager.resident_ids() == ["d", "e"]


@pytest.mark.asyncio
async def test_evictor_loop_runs_and_survives_errors() -> None:
    async with harness(evict_check_interval_ms=5) as h:
        await h.manager.load("a")
        real_evict = h.manager.evict_idle
        passes = 0

        async def flaky(now: float | None = None) -> list[str]:
            nonlocal passes
            passes += 1
            if passes == 1:
                raise RuntimeError("transient")
            return await real_evict(now)

        h.manager.evict_idle = flaky  # type: ignore[method-assign]
        h.clock.advance(2000)
        await wait_until(lambda: h.state("a") == "not_loaded")
        assert passes >= 2


@pytest.mark.asyncio
async def test_aclose_waits_for_loads_unloads_everything_and_leaks_no_task() -> None:
    async with harness(preload_model_ids=["a"]) as h:
        lease = await h.manager.acquire("a")
        h.loader.hold("b")
        h.loader.hold("c")
        loading = asyncio.create_task(h.manager.load("b"))
        queued = asyncio.create_task(h.manager.load("c"))
        await wait_until(lambda: h.loader.active == 1)
        closing = asyncio.create_task(h.manager.aclose())
        await asyncio.sleep(0.01)
        assert not closing.done()
        h.loader.release_all()
        await closing
        assert not (await loading).already_resident
        with pytest.raises(FailedPrecondition, match="shutting down"):
            await queued  # waited for a slot, then saw the shutdown
        assert h.loader.calls["c"] == 0
        assert h.manager.resident_ids() == []
        assert all(handle.closed for hs in h.loader.handles.values() for handle in hs)
        assert h.memory.used_bytes == 0
        assert asyncio.all_tasks() == {asyncio.current_task()}
        with pytest.raises(FailedPrecondition, match="shutting down"):
            await h.manager.acquire("d")
        lease.release()


# -- the real memory probe ---------------------------------------------------------------------


def test_memory_probe_reads_ram_and_explains_a_missing_gpu_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from duplexd.errors import InvalidArgument
    from duplexd.tts import memory

    assert 0 < memory.available_bytes("cpu") <= memory.total_bytes("auto")
    assert memory.process_rss_bytes() > 0
    with pytest.raises(InvalidArgument, match="unknown device 'tpu'"):
        memory.available_bytes("tpu")
    monkeypatch.setattr(memory, "_optional", lambda module: None)  # neither NVML nor torch
    with pytest.raises(ResourceExhausted, match="cannot measure free memory on cuda:1") as info:
        memory.available_bytes("cuda:1")
    assert "nvidia-ml-py" in str(info.value)


# -- a load that cannot happen costs nothing ---------------------------------------------------


def pulled_catalog(models_dir: Path, mb: dict[str, int]) -> Catalog:
    """Models whose weights live at `models_dir/<id>` (pulled when that folder exists)."""
    return Catalog(
        {
            m: meta(m, size).model_copy(
                update={"weights": f"models://{m}", "models_dir": models_dir}
            )
            for m, size in mb.items()
        }
    )


def adapter_like(loader: FakeLoader) -> Callable[[ModelMeta], Any]:
    """A LoadFn that, like every real adapter, finds missing weights only when it loads."""

    def load(m: ModelMeta) -> Any:
        m.weights_path()
        return loader(m)

    return load


@pytest.mark.asyncio
async def test_a_load_without_weights_evicts_nothing_and_says_pull(tmp_path: Path) -> None:
    models = pulled_catalog(tmp_path, {"d": 100, "a": 100, "x": 100})
    for pulled in ("d", "a"):
        (tmp_path / pulled).mkdir()
    loader = FakeLoader()
    async with harness(
        models=models, load_fn=adapter_like(loader), resident_cap=2, min_residency_ms=0
    ) as h:
        await h.manager.load("a")
        h.clock.advance(10)
        # the cap is full and a is idle: a load that could happen would evict it
        with pytest.raises(WeightsMissing, match="duplexctl models pull x"):
            await h.manager.load("x")
        assert h.manager.resident_ids() == ["d", "a"]
        assert not [e for e in h.events if e[0] == "evicted"]
        assert loader.calls["x"] == 0
        status = h.manager.status("x")
        assert (status.state, status.status) == ("unavailable", "not pulled")
        assert "models pull x" in (status.unavailable_reason or "")
        (tmp_path / "x").mkdir()  # pulled: the listing says so at once, the load evicts a
        status = h.manager.status("x")
        assert (status.state, status.status) == ("not_loaded", "not loaded")
        assert (await h.manager.load("x")).evicted == ["a"]


@pytest.mark.asyncio
async def test_inside_min_residency_the_missing_weights_are_named_not_the_cap(
    tmp_path: Path,
) -> None:
    models = pulled_catalog(tmp_path, {"d": 100, "a": 100, "x": 100})
    for pulled in ("d", "a"):
        (tmp_path / pulled).mkdir()
    async with harness(models=models, resident_cap=2, min_residency_ms=60_000) as h:
        await h.manager.load("a")
        with pytest.raises(WeightsMissing) as info:
            await h.manager.load("x")
        assert info.value.exit_code == WeightsMissing.exit_code
        assert "resident_cap" not in str(info.value)
        assert "duplexctl models pull x" in str(info.value)
        (tmp_path / "x").mkdir()
        with pytest.raises(ResourceExhausted, match="resident_cap=2"):  # now the cap is the cause
            await h.manager.load("x")


@pytest.mark.asyncio
async def test_memory_that_evicting_cannot_free_is_refused_before_any_eviction() -> None:
    sizes = {"d": 300, "a": 300, "p": 300, "big": 600}
    models = Catalog({m: meta(m, mb) for m, mb in sizes.items()})
    async with harness(models=models, memory_mb=1000, min_residency_ms=0) as h:
        await h.manager.load("a")
        await h.manager.load("p", pin=True)
        h.clock.advance(10)
        # 100 MiB free; evicting a (the only idle model) would give 400: big needs 600
        with pytest.raises(ResourceExhausted, match="needs 600 MiB, 100 MiB free") as info:
            await h.manager.load("big")
        assert "evicting every idle model would free only 300 MiB" in str(info.value)
        assert h.manager.resident_ids() == ["d", "a", "p"]
        assert not [e for e in h.events if e[0] == "evicted"]
        h.manager.set_pinned("p", False)  # now a and p together make room: both go
        assert sorted((await h.manager.load("big")).evicted) == ["a", "p"]


@pytest.mark.asyncio
async def test_the_plan_evicts_for_the_cap_and_memory_together() -> None:
    sizes = {"d": 100, "a": 300, "b": 300, "c": 500}
    models = Catalog({m: meta(m, mb) for m, mb in sizes.items()})
    async with harness(models=models, memory_mb=1000, resident_cap=3, min_residency_ms=0) as h:
        await h.manager.load("a")
        h.clock.advance(10)
        await h.manager.load("b")
        h.clock.advance(10)
        # the cap takes a (least recently used); 300 + 300 free then fit c's 500
        assert (await h.manager.load("c")).evicted == ["a"]
        assert h.manager.resident_ids() == ["d", "b", "c"]


@pytest.mark.asyncio
async def test_a_lora_voice_whose_base_is_not_pulled_says_so(tmp_path: Path) -> None:
    models = pulled_catalog(tmp_path, {"d": 100, "base": 100, "voice": 10})
    voice = models.get("voice").model_copy(update={"base_model": "base"})
    models = Catalog({m.model_id: voice if m.model_id == "voice" else m for m in models})
    for pulled in ("d", "voice"):
        (tmp_path / pulled).mkdir()
    async with harness(models=models) as h:
        assert h.manager.status("voice").status == "base not pulled"
        assert h.manager.status("base").status == "not pulled"
        with pytest.raises(WeightsMissing, match="duplexctl models pull base"):
            await h.manager.load("voice")
        assert h.manager.resident_ids() == ["d"]
