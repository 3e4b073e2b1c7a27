"""Latency: first-audio and jitter sparklines per worker, barge-ins, per-stage turn bars."""

from __future__ import annotations

from collections.abc import Hashable

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult

from duplexctl.tui.views import STAGES, OrchestratorView, Snapshot, TurnBar, WorkerView
from duplexctl.tui.widgets.body import Body
from duplexctl.tui.widgets.format import PALETTE, Bar, Spark, ago, ms
from duplexctl.tui.widgets.panel import Panel

__all__ = ["LatencyPanel"]

_STAGE_NAMES = {
    "end_of_speech": "end of speech",
    "asr": "ASR",
    "llm_first_text": "LLM",
    "tts_first_audio": "first audio",
}
_SERIES = (
    ("first audio p50", "cyan"),
    ("first audio p95", "dodger_blue1"),
    ("jitter p95", "magenta"),
)


class LatencyPanel(Panel):
    BORDER_TITLE = "Latency"

    def compose(self) -> ComposeResult:
        yield Body(id="latency-body")

    def show(self, snapshot: Snapshot, now: float) -> None:
        workers = [w for w in snapshot.workers if w.reachable]
        parts: list[RenderableType] = [_worker(w) for w in workers]
        orch = snapshot.orchestrator
        turns: int | None = None
        if orch is not None and orch.reachable:
            parts += _orchestrator(orch, now)
            turns = len(orch.turns)
        if not parts:
            parts.append(Text("no figures yet", style="dim"))
        # Every line is no-wrap: the height is 4 per worker plus the orchestrator's lines.
        key = (tuple(_worker_key(w) for w in workers), _orchestrator_key(orch, now))
        self.query_one(Body).show(Group(*parts), shape=(len(workers), turns), key=key)


def _worker_key(w: WorkerView) -> Hashable:
    figures = (w.queue_depth, w.active_sessions, round(w.rtf, 2))
    return w.name, figures, w.fal_p50_ms, w.fal_p95_ms, w.jitter_p95_ms


def _orchestrator_key(o: OrchestratorView | None, now: float) -> Hashable:
    if o is None or not o.reachable:
        return None
    speculation = o.end_of_turn, o.eot_p95_ms, o.speculations_used, o.speculations_discarded
    return (
        o.bargein_total,
        o.bargein_p95_ms,
        o.turn_p50_ms,
        o.turns,
        speculation,
        o.warnings,
        int(now),
    )  # "5s ago"


def _grid() -> Table:
    grid = Table.grid(expand=True, padding=(0, 1))
    grid.add_column(no_wrap=True, width=16, overflow="ellipsis")
    grid.add_column(ratio=1)
    grid.add_column(no_wrap=True, justify="right", width=8)
    return grid


def _line(*parts: str | tuple[str, str]) -> Text:
    return Text.assemble(*parts, no_wrap=True, overflow="ellipsis")


def _worker(w: WorkerView) -> RenderableType:
    grid = _grid()
    series = (w.fal_p50_ms, w.fal_p95_ms, w.jitter_p95_ms)
    for (label, style), values in zip(_SERIES, series, strict=True):
        grid.add_row(label, Spark(values, style), ms(values[-1] if values else 0.0))
    rtf = f" · RTF {w.rtf:.2f}" if w.rtf else ""
    head = _line((w.name, "bold"), f"  queue {w.queue_depth} · sessions {w.active_sessions}{rtf}")
    return Group(head, grid)


def _orchestrator(o: OrchestratorView, now: float) -> list[RenderableType]:
    head = _line(("orchestrator", "bold"), f"  turn p50 {ms(o.turn_p50_ms)}")
    barge = _line(f"barge-ins {o.bargein_total} · barge-in p95 {ms(o.bargein_p95_ms)}")
    lines: list[RenderableType] = [head, barge]
    if o.end_of_turn:
        model = f" p95 {ms(o.eot_p95_ms)}" if o.end_of_turn != "silence" else ""
        spec = f"{o.speculations_used} used, {o.speculations_discarded} dropped"
        lines.append(_line(f"end of turn {o.end_of_turn}{model} · speculative replies {spec}"))
    lines += [_line(("⚠ " + w, "yellow")) for w in o.warnings]
    if not o.turns:
        return [*lines, Text("no turns yet", style="dim")]
    scale = max(sum(t.stages_ms) for t in o.turns)
    grid = _grid()
    for bar in o.turns:
        grid.add_row(_when(bar, now), Bar(_segments(bar), scale, fill=""), ms(sum(bar.stages_ms)))
    return [*lines, grid, _legend()]


def _segments(bar: TurnBar) -> list[tuple[float, str]]:
    return [(v, PALETTE[i]) for i, v in enumerate(bar.stages_ms)]


def _when(bar: TurnBar, now: float) -> str:
    """ "2 turns 5s ago": each bar is the mean of the turns that ended between two polls."""
    turns = f"{bar.turns} turn" + ("s" if bar.turns != 1 else "")
    return f"{turns} {ago(bar.at_unix, now)}"


def _legend() -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    for i, stage in enumerate(STAGES):
        text.append("■ ", style=PALETTE[i]).append(f"{_STAGE_NAMES[stage]}  ")
    text.rstrip()
    return text
