"""Thread priorities (duplexd.priority): lowered for bulk work, and inherited by the threads
that work starts (how CTranslate2's compute threads end up below the end-of-turn model)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import pytest

from duplexd.priority import lower_thread_priority, raise_thread_priority, run_at_lower_priority

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's"
)


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_work_run_at_lower_priority_and_the_threads_it_starts_stay_there() -> None:
    base = _nice()
    seen: dict[str, int] = {}

    def load() -> threading.Thread:
        seen["loader"] = _nice()
        started = threading.Event()

        def compute() -> None:  # a library's pool thread, started by the loading thread
            seen["pool"] = _nice()
            started.set()

        thread = threading.Thread(target=compute)
        thread.start()
        started.wait(5)
        return thread

    asyncio.run(run_at_lower_priority(3, load)).join(5)
    assert seen == {"loader": min(19, base + 3), "pool": min(19, base + 3)}
    assert _nice() == base  # the caller's own priority is untouched


def test_lowering_by_nothing_changes_nothing_and_raising_says_whether_it_could() -> None:
    result: dict[str, object] = {}

    def probe() -> None:
        base = _nice()
        result["lower0"] = lower_thread_priority(0)
        result["after0"] = _nice() - base
        raised = raise_thread_priority(2)
        result["raised"], result["delta"] = raised, _nice() - base

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join(5)
    assert result["lower0"] is False and result["after0"] == 0
    # root (or CAP_SYS_NICE) may raise it; anyone else is refused and nothing changes
    assert result["delta"] == (-2 if result["raised"] else 0)
