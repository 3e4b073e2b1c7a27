"""What the dashboard's poller keeps between polls: latency series, turn bars, log tails.

A single poll sees a worker's latest figures, the orchestrator's cumulative histograms and
the daemons' log files as they are now; these classes turn that into history: the last
polls' latency, per-stage means of the turns that ended since the previous poll, and the
log lines written since.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from duplexctl.supervise.logs import current_run_start
from duplexctl.tui.views import STAGES, LogLine, TurnBar, WorkerView

__all__ = ["LatencySeries", "LogTail", "TurnTracker", "prometheus_samples"]

_LOG_KEEP = 1000  # lines kept for the log pane, across all daemons
_LOG_FIRST_READ = 32_768  # bytes read from the end of a log the first time we see it
_LOG_MAX_READ = 1 << 20  # a log that grew more than this between polls is skipped ahead


class LatencySeries:
    """A worker's latency figures over the last `keep` polls."""

    def __init__(self, keep: int) -> None:
        self.p50: deque[float] = deque(maxlen=keep)
        self.p95: deque[float] = deque(maxlen=keep)
        self.jitter: deque[float] = deque(maxlen=keep)

    def add(self, view: WorkerView) -> WorkerView:
        """Record the view's latest figures; the view back with the whole history."""
        for values, new in (
            (self.p50, view.fal_p50_ms),
            (self.p95, view.fal_p95_ms),
            (self.jitter, view.jitter_p95_ms),
        ):
            values.append(new[-1] if new else 0.0)
        return replace(
            view,
            fal_p50_ms=tuple(self.p50),
            fal_p95_ms=tuple(self.p95),
            jitter_p95_ms=tuple(self.jitter),
        )


# -- Prometheus ---------------------------------------------------------------------------------


_LABELS = ("stage", "step", "outcome", "by", "result")


def prometheus_samples(text: str) -> dict[tuple[str, str], float]:
    """(sample name, its `stage`/`step`/`outcome`/`by`/`result` label) -> value; buckets are
    skipped."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not s.name.endswith("_bucket"):
                label = next((s.labels[k] for k in _LABELS if s.labels.get(k)), "")
                out[s.name, label] = s.value
    return out


class TurnTracker:
    """Recent per-stage means from the turn histograms' sum/count deltas between polls."""

    def __init__(self, keep: int = 8) -> None:
        self._last: dict[str, tuple[float, float]] | None = None
        self._bars: deque[TurnBar] = deque(maxlen=keep)

    def update(self, samples: Mapping[tuple[str, str], float], now: float) -> tuple[TurnBar, ...]:
        current = {
            st: (
                samples.get(("duplex_orch_turn_ms_sum", st), 0.0),
                samples.get(("duplex_orch_turn_ms_count", st), 0.0),
            )
            for st in STAGES
        }
        last = self._last or {st: (0.0, 0.0) for st in STAGES}
        if any(current[st][1] < last[st][1] for st in STAGES):  # the orchestrator restarted
            last = {st: (0.0, 0.0) for st in STAGES}
        self._last = current
        means, turns = [], 0
        for st in STAGES:
            d_sum, d_count = current[st][0] - last[st][0], current[st][1] - last[st][1]
            means.append(d_sum / d_count if d_count else 0.0)
            turns = max(turns, int(d_count))
        if turns:
            self._bars.append(TurnBar(now, turns, tuple(means)))
        return tuple(self._bars)


# -- logs ---------------------------------------------------------------------------------------


class LogTail:
    """Reads what each daemon log gained since the last poll. At first: from near its end, and
    no further back than the current run's start (`duplexctl.supervise.logs`), so lines of
    an earlier `duplexctl up` never show as if they were new."""

    def __init__(self) -> None:
        self._offsets: dict[Path, int] = {}
        self._lines: deque[LogLine] = deque(maxlen=_LOG_KEEP)
        self._seq = 0

    def read(self, files: Mapping[str, Path]) -> tuple[LogLine, ...]:
        for name, path in files.items():
            for raw in self._new_lines(path):
                self._seq += 1
                self._lines.append(LogLine(self._seq, name, raw))
        return tuple(self._lines)

    def _new_lines(self, path: Path) -> list[str]:
        try:
            size = path.stat().st_size
        except OSError:
            return []
        offset = self._offsets.get(path)
        if offset is None or size - offset > _LOG_MAX_READ:
            offset = max(size - (_LOG_FIRST_READ if offset is None else _LOG_MAX_READ), 0)
            mid_line = offset > 0
        else:
            mid_line = False
        if size < offset:  # truncated or replaced: start over
            offset, mid_line = 0, False
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read(size - offset)
        if mid_line:  # we jumped into the middle of a line: drop its tail
            cut = data.find(b"\n") + 1
            data, offset = data[cut:], offset + cut
        complete = data.rfind(b"\n") + 1  # a half-written last line waits for the next poll
        if path not in self._offsets:  # first sight: only the current run (earlier `up`s: no)
            cut = current_run_start(data[:complete])
            data, offset, complete = data[cut:], offset + cut, complete - cut
        self._offsets[path] = offset + complete
        return data[:complete].decode(errors="replace").splitlines()
