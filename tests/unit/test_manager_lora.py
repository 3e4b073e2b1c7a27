"""LoRA voices and unavailable entries in the Model Manager (fakes from duplexd.devkit.models).

The engine side (peft adapters on a real CSM) is tested in test_csm_adapter.py and, through a
real worker, in tests/integration/test_csm.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from duplexd.config import ModelManagerConfig
from duplexd.devkit.models import FakeLoader, FakeMemory, ManualClock
from duplexd.errors import FailedPrecondition, ModelLoadError, ModelNotFound
from duplexd.tts.catalog import Catalog, ModelMeta
from duplexd.tts.manager import ModelManager

MIB = 2**20


def _meta(model_id: str, **extra: Any) -> ModelMeta:
    return ModelMeta(model_id=model_id, family="fake", native_sr=24000, **extra)


CATALOG = Catalog(
    {
        m.model_id: m
        for m in (
            _meta("d"),
            _meta("base", estimated_memory_mb=500, supports_lora=True),
            _meta("v1", base_model="base", estimated_memory_mb=10),
            _meta("v2", base_model="base", estimated_memory_mb=10),
            _meta("orphan", base_model="missing-base"),
            _meta("other", estimated_memory_mb=100),
            _meta("parler", unavailable="parler-tts pins transformers 4.46 (see docs/models.md)"),
        )
    }
)


@dataclass
class H:
    manager: ModelManager
    loader: FakeLoader
    clock: ManualClock


@asynccontextmanager
async def harness(**config: Any) -> AsyncIterator[H]:
    memory = FakeMemory(10_000 * MIB)
    loader = FakeLoader(memory)
    clock = ManualClock()
    cfg = {
        "default_model_id": "d",
        "ttl_ms": 1000,
        "min_residency_ms": 0,
        "evict_check_interval_ms": 60_000,
        "resident_cap": 2,
        "memory_headroom_mb": 0,
        **config,
    }
    manager = ModelManager(
        CATALOG,
        ModelManagerConfig(**cfg),
        loader,
        clock=clock,
        wall_clock=clock,
        memory_probe=memory.available,
        attach_fn=loader.attach,
        device_of=lambda meta: "cpu",
    )
    await manager.start()
    try:
        yield H(manager, loader, clock)
    finally:
        loader.release_all()
        await manager.aclose()


@pytest.mark.asyncio
async def test_a_voice_loads_its_base_then_attaches_only_the_adapter() -> None:
    async with harness() as h:
        result = await h.manager.load("v1")
        assert h.loader.calls["base"] == 1 and h.loader.attached == [("base", "v1")]
        await h.manager.load("v2")
        assert h.loader.calls["base"] == 1, "a second voice must not load a second base"
        assert h.loader.attached == [("base", "v1"), ("base", "v2")]
        base = h.manager.status("base")
        assert base.adapters == ("v1", "v2") and base.state == "resident"
        assert h.manager.status("v1").base_model == "base"
        assert not result.already_resident
        # resident_cap=2 counts d and base; the voices share the base
        assert set(h.manager.resident_ids()) == {"d", "base", "v1", "v2"}


@pytest.mark.asyncio
async def test_unloading_a_voice_detaches_only_it_and_the_base_stays_for_the_other() -> None:
    async with harness() as h:
        await h.manager.load("v1")
        lease = await h.manager.acquire("v2")
        with pytest.raises(FailedPrecondition, match="LoRA voices attached: v1, v2"):
            await h.manager.unload("base", force=True)
        await h.manager.unload("v1")
        v1_handle = h.loader.handles["v1"][0]
        assert v1_handle.closed and not h.loader.handles["base"][0].closed
        assert h.manager.status("base").adapters == ("v2",)
        assert h.manager.status("v2").state == "resident"
        lease.release()


@pytest.mark.asyncio
async def test_ttl_evicts_voices_first_then_their_base() -> None:
    async with harness() as h:
        await h.manager.load("v1")
        h.clock.advance(500)
        kept = h.manager.status("base")
        assert kept.ttl_remaining_ms is None, "an attached voice keeps the base"
        h.clock.advance(600)  # v1 idle 1.1 s > ttl
        assert await h.manager.evict_idle() == ["v1"]
        assert h.manager.status("base").state == "resident", "the base's idle clock starts now"
        assert h.manager.status("base").ttl_remaining_ms == 1000
        h.clock.advance(1100)
        assert await h.manager.evict_idle() == ["base"]


@pytest.mark.asyncio
async def test_lru_cap_sees_a_base_with_voices_as_one_model() -> None:
    async with harness(resident_cap=2) as h:
        await h.manager.load("v1")
        h.clock.advance(2000)
        # loading `other` needs room: the idle voice goes, then its base
        result = await h.manager.load("other")
        assert result.evicted == ["v1", "base"]
        assert set(h.manager.resident_ids()) == {"d", "other"}


@pytest.mark.asyncio
async def test_voice_errors_are_precise() -> None:
    async with harness() as h:
        with pytest.raises(ModelNotFound, match="needs base model 'missing-base'"):
            await h.manager.load("orphan")
        h.loader.fail("v1", ModelLoadError("adapter for another base"))
        with pytest.raises(ModelLoadError, match="another base"):
            await h.manager.load("v1")
        assert h.manager.status("base").adapters == (), "a failed attach leaves no trace"
        h.loader.fail("v1", None)
        await h.manager.load("v1")
        assert h.manager.status("base").adapters == ("v1",)


@pytest.mark.asyncio
async def test_catalog_unavailable_entries_answer_their_reason() -> None:
    async with harness() as h:
        status = h.manager.status("parler")
        assert status.state == "unavailable" and "transformers 4.46" in (
            status.unavailable_reason or ""
        )
        with pytest.raises(FailedPrecondition, match="cannot be served by this build"):
            await h.manager.load("parler")
        assert h.loader.calls["parler"] == 0
