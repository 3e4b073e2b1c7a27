"""Small asyncio helpers for every daemon: an owner for background tasks, a list of synchronous
subscribers, and cancel-and-wait (LiveKit's ``utils/aio`` habit).

Every task has one owner (STYLE.md): a fire-and-forget ``asyncio.create_task`` can be garbage
collected mid-run, and its exception is either lost or printed as "Task exception was never
retrieved" long after the fact. A `TaskSet` keeps each task until it finishes, reads its
exception when it does (logging it, or handing it to ``on_error``), and cancels whatever is left
when its owner closes. Generic: nothing here knows about TTS, sessions or the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any, Generic, ParamSpec, TypeVar

from duplexd.logging import get_logger

__all__ = ["Subscribers", "TaskSet", "cancel_and_wait"]

T = TypeVar("T")
P = ParamSpec("P")

_log = get_logger("duplexd.aio")

ErrorHook = Callable[["asyncio.Task[Any]", BaseException], None]


class TaskSet:
    """Owns background tasks: nothing runs unowned, and no failure goes unread.

    A task that raises is logged on ``log`` (structlog style: ``failure_event``, the task's name
    and the error) and passed to ``on_error``. ``log=None`` only reads the exception: for tasks
    whose awaiters already get it and report it themselves.
    """

    def __init__(
        self,
        *,
        log: Any = _log,
        failure_event: str = "background task failed",
        on_error: ErrorHook | None = None,
    ) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._log = log
        self._failure_event = failure_event
        self._on_error = on_error

    def spawn(self, coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait_all(self) -> None:
        """Until every task, including any spawned meanwhile, has finished (errors not raised)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def cancel_all(self) -> None:
        """Cancel every task and wait until all have finished: nothing is left running."""
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or (exc := task.exception()) is None:
            return
        if self._log is not None:
            self._log.error(self._failure_event, task=task.get_name(), error=repr(exc))
        if self._on_error is not None:
            self._on_error(task, exc)


class Subscribers(Generic[P]):
    """Synchronous callbacks, called in subscription order on `notify`.

    A callback that raises is logged (``failure_event``, its arguments named by ``arg_names``)
    and never propagated: one bad listener must not break the notifier or the listeners after
    it. A callback may unsubscribe itself (or others) while being notified.
    """

    def __init__(
        self,
        *,
        log: Any = _log,
        failure_event: str = "subscriber failed",
        arg_names: tuple[str, ...] = (),
    ) -> None:
        self._callbacks: list[Callable[P, None]] = []
        self._log = log
        self._failure_event = failure_event
        self._arg_names = arg_names

    def subscribe(self, callback: Callable[P, None]) -> Callable[[], None]:
        """Add `callback`; returns its unsubscribe function (idempotent)."""
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    def __len__(self) -> int:
        return len(self._callbacks)

    def notify(self, *args: P.args, **kwargs: P.kwargs) -> None:
        for callback in list(self._callbacks):
            try:
                callback(*args, **kwargs)
            except Exception:
                fields = dict(zip(self._arg_names, args, strict=False)) or {"args": args}
                self._log.exception(self._failure_event, **{**fields, **kwargs})


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (None: nothing to do) and wait until it has finished; its
    CancelledError is swallowed (so is one aimed at the caller meanwhile: call this from
    cleanup code, as the hand-written ``cancel(); with suppress(...): await`` did)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
