"""CPU priority of threads doing bulk work, so that latency-critical work goes first.

Linux gives every thread its own nice value, and a new thread starts with its creator's. The
orchestrator runs its ASR `asr.nice` steps below everything else: the model is loaded from a
thread at that priority, so CTranslate2's compute threads (started by the loading thread) are
at it too, and each session's decode thread lowers itself. Under load the end-of-turn model,
the event loop (VAD, network) and the replies get the cores first; the ASR takes the rest.
The end-of-turn model's decision thread asks for the top priority (`raise_thread_priority`),
which the OS grants only to root or with CAP_SYS_NICE; elsewhere it stays level with the rest.
Lowering a priority needs no privilege. Where threads have no nice value of their own (not
Linux) this does nothing.

A nice value ranks threads only against others in the same autogroup: where the kernel groups
each session's processes (`/proc/sys/kernel/sched_autogroup_enabled`, on in Debian's kernels)
or a container's cgroup holds them, it first shares the CPU between the groups. The TTS worker
and the orchestrator are separate daemons, so at nice -20 a decision still waited 15-60 ms
behind the worker's synthesis under load. `realtime_thread_priority` puts a thread in the
real-time class instead (SCHED_FIFO, the lowest real-time level), ahead of every ordinary
thread on its core, where the OS allows it; the kernel's real-time throttling
(`sched_rt_runtime_us`, 95 % of each second by default) bounds what such threads can take.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = [
    "lower_thread_priority",
    "raise_thread_priority",
    "realtime_thread_priority",
    "run_at_lower_priority",
    "thread_priority",
]

T = TypeVar("T")


def lower_thread_priority(increment: int) -> bool:
    """Lower the calling thread's CPU priority by `increment` nice steps (0: no change).
    False where it cannot (not Linux, or refused)."""
    return increment > 0 and _renice(increment)


def raise_thread_priority(steps: int) -> bool:
    """Raise the calling thread's CPU priority by `steps` nice steps, where the OS allows it
    (root, CAP_SYS_NICE or RLIMIT_NICE); False, and no change, where it does not."""
    return steps > 0 and _renice(-steps)


def realtime_thread_priority() -> bool:
    """Put the calling thread in the real-time class (SCHED_FIFO at level 1, the lowest) where
    the OS allows it (root or CAP_SYS_NICE, and real-time time for its cgroup); False, and no
    change, where it does not. Threads it starts afterwards inherit the class: start none that
    spin."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except OSError:
        return False
    return True


def thread_priority() -> str:
    """The calling thread's priority in words, for logs and /status: "real-time", "nice -20",
    "nice 0"…"""
    if sys.platform.startswith("linux") and os.sched_getscheduler(0) in (
        os.SCHED_FIFO,
        os.SCHED_RR,
    ):
        return "real-time"
    try:
        return f"nice {os.getpriority(os.PRIO_PROCESS, threading.get_native_id())}"
    except (OSError, AttributeError):
        return "default"


def _renice(delta: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        now = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, max(-20, min(19, now + delta)))
    except OSError:
        return False
    return True


async def run_at_lower_priority(increment: int, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """Run blocking `fn` on a fresh thread `increment` nice steps down: the threads it starts
    (a model's compute pool) keep that priority after it returns."""
    with ThreadPoolExecutor(1, "low-priority", lower_thread_priority, (increment,)) as pool:
        return await asyncio.get_running_loop().run_in_executor(pool, lambda: fn(*args, **kw))
