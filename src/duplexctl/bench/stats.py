"""Small, exact statistics for the suites: percentile summaries and a simulated playout buffer.

The playout model is the client's, written down so every suite counts underruns the same way:
playback starts once `prebuffer` frames (40 ms) have arrived, then one frame is consumed every
20 ms by the clock; an underrun is a consume tick that finds the buffer empty (that tick plays
silence, the frame plays one tick later).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import pairwise

from duplexd.metrics import percentile

__all__ = [
    "FRAME_S",
    "PREBUFFER_FRAMES",
    "STEADY_SKIP_FRAMES",
    "playout_underruns",
    "ratio",
    "steady_jitter_ms",
    "summary",
]

FRAME_S = 0.020
PREBUFFER_FRAMES = 2  # the 40 ms client buffer
# The worker sends its lead (120 ms by default) at once, then paces to real time; frames before
# this index belong to that burst and say nothing about cadence.
STEADY_SKIP_FRAMES = 10


def summary(values: Iterable[float], *, digits: int = 2) -> dict[str, float | None]:
    """p50/p95/p99/mean/max of `values` (all None when there are none)."""
    vals = [float(v) for v in values]
    if not vals:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    return {
        "p50": round(percentile(vals, 50), digits),
        "p95": round(percentile(vals, 95), digits),
        "p99": round(percentile(vals, 99), digits),
        "mean": round(sum(vals) / len(vals), digits),
        "max": round(max(vals), digits),
    }


def ratio(num: float | None, den: float | None, digits: int = 3) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return round(num / den, digits)


def playout_underruns(
    arrivals: Sequence[float], *, prebuffer: int = PREBUFFER_FRAMES, frame_s: float = FRAME_S
) -> int:
    """Underruns of a client that buffers `prebuffer` frames, then plays one per `frame_s`.

    `arrivals` are the frames' arrival times in seconds, in order.
    """
    n = len(arrivals)
    if n == 0:
        return 0
    start = arrivals[min(prebuffer, n) - 1]
    consumed = arrived = underruns = 0
    tick = 0
    while consumed < n:
        now = start + tick * frame_s
        while arrived < n and arrivals[arrived] <= now + 1e-9:
            arrived += 1
        if arrived > consumed:
            consumed += 1
        else:
            underruns += 1
        tick += 1
    return underruns


def steady_jitter_ms(
    arrivals: Sequence[float], *, skip: int = STEADY_SKIP_FRAMES, frame_s: float = FRAME_S
) -> list[float]:
    """|inter-arrival − 20 ms| in ms for the steady part of one stream (after `skip` frames)."""
    steady = arrivals[skip:]
    return [abs((b - a) - frame_s) * 1000 for a, b in pairwise(steady)]
