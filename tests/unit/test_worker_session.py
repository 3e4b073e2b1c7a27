"""WorkerSession.begin: a new utterance right after the previous one was cancelled or STOPped.

Issue item 10: ~4 % of immediate retries after a cancel failed "already speaking". A client's
cancel and its next Synthesize race through gRPC, and the worker used to answer the new call
before the old utterance had noticed its end. Here the race is made deterministic: the old
utterance's teardown is held back on purpose and `begin` must wait for it (and only for it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import numpy as np
import pytest

from duplexd.audio.frames import AudioFrame
from duplexd.audio.pcm import Float32Array
from duplexd.config import WorkerSection
from duplexd.errors import FailedPrecondition
from duplexd.tts.adapters.base import TTSAdapter
from duplexd.tts.catalog import ModelMeta
from duplexd.tts.manager import Lease
from duplexd.tts.session import TextIn, Utterance, WorkerSession

SR = 16_000
TEXT = "One unit here. Another unit there. And a third one to be sure."


class _Tone(TTSAdapter):
    """0.4 s of a quiet tone per unit, no engine."""

    family = "tone"

    def _load(self) -> None:
        pass

    def _generate(
        self, text: str, voice: str | None, language: str | None
    ) -> Iterator[Float32Array]:
        t = np.arange(int(0.4 * SR), dtype=np.float32) / SR
        yield (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


class _Lease:
    def __init__(self, adapter: TTSAdapter) -> None:
        self.handle = adapter
        self.model_id = adapter.meta.model_id
        self.released = False

    def release(self) -> None:
        self.released = True


def _state(session: WorkerSession) -> str:
    return session.state  # read afresh (mypy would keep an earlier comparison's narrowing)


async def _nothing() -> AsyncIterator[TextIn]:
    return
    yield  # an async generator that ends at once: the text came complete


@pytest.fixture
def session() -> Iterator[WorkerSession]:
    meta = ModelMeta.model_validate({"model_id": "tone", "family": "tone", "native_sr": SR})
    adapter = _Tone(meta)
    adapter.load()
    yield WorkerSession("s1", cast(Lease, _Lease(adapter)), None, None)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


CFG = WorkerSection(lead_ms=2000)  # nothing waits on the pacer in these tests


async def _speaking(
    session: WorkerSession, executor: ThreadPoolExecutor
) -> tuple[Utterance, AsyncGenerator[AudioFrame, None]]:
    utterance = await session.begin(CFG, executor)
    frames = utterance.run(TextIn(session.id, TEXT, True), _nothing())
    await anext(frames)  # it speaks
    assert session.state == "speaking"
    return utterance, frames


@pytest.mark.asyncio
async def test_a_call_cancelled_just_before_the_next_one_is_waited_for(
    session: WorkerSession, executor: ThreadPoolExecutor
) -> None:
    old, frames = await _speaking(session, executor)

    async def cancel_arrives_late() -> (
        None
    ):  # gRPC delivers the old call's cancel after the new call
        await asyncio.sleep(0.05)
        await frames.aclose()

    assert old.queue_depth > 0  # frames made ahead of the pacer
    late = asyncio.create_task(cancel_arrives_late())
    new = await session.begin(CFG, executor)  # was: FailedPrecondition "already speaking"
    await late
    assert old.finished and new is session.utterance and new is not old
    assert old.queue_depth == 0  # the cut-off audio is not kept with the session


@pytest.mark.asyncio
async def test_a_stopped_utterance_makes_way_at_once(
    session: WorkerSession, executor: ThreadPoolExecutor
) -> None:
    old, frames = await _speaking(session, executor)
    old.stop()  # the STOP ack went out; the emitter has not run since

    async def drive() -> None:  # the old call's handler goes on as gRPC lets it
        async for _ in frames:
            pass

    handler = asyncio.create_task(drive())
    new = await session.begin(CFG, executor)
    await handler
    assert old.finished and session.utterance is new


@pytest.mark.asyncio
async def test_a_stopped_utterance_stuck_in_a_write_is_closed_after_the_grace(
    session: WorkerSession, executor: ThreadPoolExecutor
) -> None:
    """STOPped, but its handler never runs again (its client stopped reading): it sends nothing
    more, so after the grace the new call gets the session and the old one is torn down."""
    old, frames = await _speaking(session, executor)
    old.stop()
    started = time.monotonic()
    new = await session.begin(CFG, executor, grace_s=0.2)
    assert time.monotonic() - started >= 0.19
    assert old.finished and session.utterance is new
    assert [f async for f in frames] == []  # when its write returns, nothing more goes out


@pytest.mark.asyncio
async def test_two_calls_at_once_are_still_refused(
    session: WorkerSession, executor: ThreadPoolExecutor
) -> None:
    old, frames = await _speaking(session, executor)
    with pytest.raises(FailedPrecondition, match="already speaking"):
        await session.begin(CFG, executor, grace_s=0.1)
    assert session.utterance is old and _state(session) == "speaking"
    await frames.aclose()
    assert old.finished and _state(session) == "idle"


@pytest.mark.asyncio
async def test_a_session_ended_while_waiting_is_refused(
    session: WorkerSession, executor: ThreadPoolExecutor
) -> None:
    _, frames = await _speaking(session, executor)

    async def end() -> None:
        await asyncio.sleep(0.05)
        session.close()
        await frames.aclose()

    ender = asyncio.create_task(end())
    with pytest.raises(FailedPrecondition, match="has ended"):
        await session.begin(CFG, executor)
    await ender
