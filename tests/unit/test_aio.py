"""The shared asyncio helpers: a TaskSet owns its tasks and reads their failures; Subscribers
isolate one failing listener from the others. The suite's leaked-task fixture checks that
nothing outlives a test."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from duplexd.aio import Subscribers, TaskSet, cancel_and_wait


class RecordingLog:
    """A structlog-shaped logger that keeps what it was asked to write."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def error(self, event: str, **fields: Any) -> None:
        self.lines.append(("error", event, fields))

    def exception(self, event: str, **fields: Any) -> None:
        self.lines.append(("exception", event, fields))


async def _fail(message: str) -> None:
    await asyncio.sleep(0)
    raise RuntimeError(message)


async def _forever(started: asyncio.Event) -> None:
    started.set()
    await asyncio.Event().wait()


# -- TaskSet ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_failing_task_is_collected_logged_and_reported() -> None:
    log, errors = RecordingLog(), []
    tasks = TaskSet(log=log, failure_event="job failed", on_error=lambda t, e: errors.append(e))
    task = tasks.spawn(_fail("boom"), "job-1")
    assert len(tasks) == 1
    await tasks.wait_all()
    assert len(tasks) == 0  # collected: the set holds only running tasks
    assert task.done() and str(task.exception()) == "boom"
    assert log.lines == [
        ("error", "job failed", {"task": "job-1", "error": "RuntimeError('boom')"})
    ]
    assert [str(e) for e in errors] == ["boom"]


@pytest.mark.asyncio
async def test_the_default_log_names_the_task() -> None:
    with capture_logs() as logs:
        tasks = TaskSet()
        tasks.spawn(_fail("bad"), "reader")
        await tasks.wait_all()
    assert [(line["event"], line["task"], line["log_level"]) for line in logs] == [
        ("background task failed", "reader", "error")
    ]


@pytest.mark.asyncio
async def test_without_a_log_a_failure_is_only_read() -> None:
    """For tasks whose awaiters report the error: no log line, no "never retrieved" warning."""
    with capture_logs() as logs:
        tasks = TaskSet(log=None)
        task = tasks.spawn(_fail("quiet"), "load")
        with pytest.raises(RuntimeError, match="quiet"):
            await task
        await tasks.wait_all()
    assert logs == []


@pytest.mark.asyncio
async def test_results_and_successes_are_not_logged() -> None:
    log = RecordingLog()
    tasks = TaskSet(log=log)

    async def answer() -> int:
        return 42

    assert await tasks.spawn(answer(), "answer") == 42
    await tasks.wait_all()
    assert log.lines == [] and len(tasks) == 0


@pytest.mark.asyncio
async def test_cancel_all_cancels_every_task_and_leaks_none() -> None:
    log = RecordingLog()
    tasks = TaskSet(log=log)
    started = [asyncio.Event() for _ in range(3)]
    spawned = [tasks.spawn(_forever(event), f"worker-{i}") for i, event in enumerate(started)]
    await asyncio.gather(*(event.wait() for event in started))
    await tasks.cancel_all()
    assert len(tasks) == 0
    assert all(task.cancelled() for task in spawned)
    assert log.lines == []  # a cancellation is not a failure
    await tasks.cancel_all()  # closing twice is harmless


@pytest.mark.asyncio
async def test_wait_all_waits_for_tasks_spawned_meanwhile() -> None:
    tasks, order = TaskSet(), []

    async def child() -> None:
        await asyncio.sleep(0)
        order.append("child")

    async def parent() -> None:
        tasks.spawn(child(), "child")
        order.append("parent")

    tasks.spawn(parent(), "parent")
    await tasks.wait_all()
    assert order == ["parent", "child"] and len(tasks) == 0


@pytest.mark.asyncio
async def test_cancel_and_wait() -> None:
    started = asyncio.Event()
    task = asyncio.create_task(_forever(started))
    await started.wait()
    await cancel_and_wait(task)
    assert task.cancelled()
    await cancel_and_wait(None)  # nothing started: nothing to do


# -- Subscribers -----------------------------------------------------------------------------


def test_subscribers_are_called_in_order_until_unsubscribed() -> None:
    subscribers: Subscribers[[str, str]] = Subscribers(log=RecordingLog())
    seen: list[tuple[str, str, str]] = []
    stop_a = subscribers.subscribe(lambda event, model: seen.append(("a", event, model)))
    subscribers.subscribe(lambda event, model: seen.append(("b", event, model)))
    subscribers.notify("loaded", "m1")
    stop_a()
    stop_a()  # idempotent
    subscribers.notify("evicted", "m1")
    assert seen == [("a", "loaded", "m1"), ("b", "loaded", "m1"), ("b", "evicted", "m1")]
    assert len(subscribers) == 1


def test_a_raising_subscriber_is_logged_and_the_others_still_run() -> None:
    log = RecordingLog()
    subscribers: Subscribers[[str, str]] = Subscribers(
        log=log, failure_event="model event subscriber failed", arg_names=("event_name", "model")
    )
    seen: list[str] = []

    def broken(event: str, model: str) -> None:
        raise ValueError("listener bug")

    subscribers.subscribe(lambda event, model: seen.append("before"))
    subscribers.subscribe(broken)
    subscribers.subscribe(lambda event, model: seen.append("after"))
    subscribers.notify("loaded", "m1")  # does not raise
    assert seen == ["before", "after"]
    assert log.lines == [
        ("exception", "model event subscriber failed", {"event_name": "loaded", "model": "m1"})
    ]


def test_a_subscriber_may_unsubscribe_itself_while_notified() -> None:
    subscribers: Subscribers[[int]] = Subscribers(log=RecordingLog())
    calls: list[str] = []

    def once(n: int) -> None:
        calls.append(f"once {n}")
        unsubscribe()

    unsubscribe = subscribers.subscribe(once)
    subscribers.subscribe(lambda n: calls.append(f"always {n}"))
    subscribers.notify(1)
    subscribers.notify(2)
    assert calls == ["once 1", "always 1", "always 2"]


def test_unnamed_arguments_are_logged_as_args() -> None:
    log = RecordingLog()
    subscribers: Subscribers[[int, int]] = Subscribers(log=log)

    def broken(a: int, b: int) -> None:
        raise RuntimeError

    subscribers.subscribe(broken)
    subscribers.notify(1, 2)
    assert log.lines == [("exception", "subscriber failed", {"args": (1, 2)})]
