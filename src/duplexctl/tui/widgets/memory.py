"""Memory: per worker, VRAM (on a GPU) or RAM (on a CPU), used vs total, split by model."""

from __future__ import annotations

from collections.abc import Hashable

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult

from duplexctl.format import human_bytes
from duplexctl.tui.views import Snapshot, WorkerView
from duplexctl.tui.widgets.body import Body
from duplexctl.tui.widgets.format import PALETTE, Bar
from duplexctl.tui.widgets.panel import Panel

__all__ = ["MemoryPanel"]

_WORKER_STYLE = "grey62"  # the worker process beyond its models: runtime, buffers
_OTHER_STYLE = "grey42"  # everything else using the same RAM/VRAM
Segments = list[tuple[float, str, str]]  # value, style, label


class MemoryPanel(Panel):
    BORDER_TITLE = "Memory"

    def compose(self) -> ComposeResult:
        yield Body(id="memory-body")

    def show(self, snapshot: Snapshot, now: float) -> None:
        parts: list[RenderableType] = []
        shape: list[Hashable] = []
        key: list[Hashable] = []
        for w in snapshot.workers:
            head = _head(w)
            segments = _segments(w) if w.reachable and w.mem_total_bytes > 0 else []
            parts.append(_drawing(head, segments, w.mem_total_bytes) if segments else head)
            shape.append(len(segments))
            key.append((head.plain, tuple(_legend_text(s) for s in segments), _cells(w, segments)))
        if not parts:
            parts.append(Text("no worker answers", style="dim"))
        self.query_one(Body).show(Group(*parts), shape=tuple(shape), key=tuple(key))


def _head(w: WorkerView) -> Text:
    kind = "VRAM" if w.gpu else "RAM"
    head = Text.assemble((w.name, "bold"), f"  {kind} · {w.device}  ", no_wrap=True)
    head.overflow = "ellipsis"
    if not w.reachable or w.mem_total_bytes <= 0:
        head.append(w.error or "no memory figures", style="red" if w.error else "dim")
    else:
        head.append(f"{human_bytes(w.mem_used_bytes)} / {human_bytes(w.mem_total_bytes)}")
    return head


def _segments(w: WorkerView) -> Segments:
    """Resident models, then the rest of the worker process (CPU only), then everything else."""
    resident = [m for m in w.models if m.resident]
    out: Segments = [
        (float(m.memory_bytes), PALETTE[i % len(PALETTE)], m.id) for i, m in enumerate(resident)
    ]
    models_total = sum(m.memory_bytes for m in resident)
    # On a CPU the worker's RSS holds its models; on a GPU the RSS is host memory, not VRAM.
    worker_rest = 0 if w.gpu else max(w.rss_bytes - models_total, 0)
    if worker_rest:
        out.append((float(worker_rest), _WORKER_STYLE, "worker"))
    others = max(w.mem_used_bytes - models_total - worker_rest, 0)
    out.append((float(others), _OTHER_STYLE, "other"))
    return out


def _drawing(head: Text, segments: Segments, total: int) -> RenderableType:
    bar = Table.grid(expand=True)
    bar.add_column(ratio=1)
    bar.add_row(Bar([(v, style) for v, style, _ in segments], float(total)))
    legend = Table.grid(expand=True, padding=(0, 1, 0, 0))
    legend.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
    legend.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
    keys = [
        Text.assemble(("■ ", style), _legend_text((v, style, name))) for v, style, name in segments
    ]
    for i in range(0, len(keys), 2):
        legend.add_row(*keys[i : i + 2])
    return Group(head, bar, legend)


def _legend_text(segment: tuple[float, str, str]) -> str:
    value, _, name = segment
    return f"{name} {human_bytes(value)}"


def _cells(w: WorkerView, segments: Segments) -> tuple[int, ...]:
    """The bar's proportions at a resolution finer than any terminal's width."""
    return tuple(round(v / w.mem_total_bytes * 400) for v, _, _ in segments)
