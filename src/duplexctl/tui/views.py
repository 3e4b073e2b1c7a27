"""What a dashboard poll sees: immutable views of daemons, workers, models and sessions.

A leaf module (standard library only): the panels draw these, `duplexctl.tui.data` builds
them, and tests make them by hand.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

__all__ = [
    "STAGES",
    "DaemonView",
    "LogLine",
    "ModelView",
    "OrchestratorView",
    "SessionView",
    "Snapshot",
    "TurnBar",
    "WorkerView",
    "unique_names",
]

# Turn stages in the order they happen (duplex_orch_turn_ms{stage=...}); their sum is the
# user-perceived gap from the end of speech to the first audio of the reply.
STAGES = ("end_of_speech", "asr", "llm_first_text", "tts_first_audio")


# -- what a poll sees --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelView:
    """One catalog entry on one worker (a `ModelInfo`, with the state as a lower-case word)."""

    id: str
    family: str = ""
    state: str = "not_loaded"  # not_loaded | loading | resident | unloading | unavailable
    refcount: int = 0
    pinned: bool = False
    is_default: bool = False
    last_used_unix: float = 0.0
    ttl_remaining_ms: int = -1  # -1: not subject to TTL
    memory_bytes: int = 0
    load_ms: float = 0.0
    unavailable_reason: str = ""
    status: str = ""  # the worker's STATE word (duplexctl.modelstate); "" from older workers

    @property
    def resident(self) -> bool:
        return self.state == "resident"


@dataclass(frozen=True)
class WorkerView:
    """A worker's hardware, models and latency; the three series are oldest first."""

    addr: str
    name: str
    reachable: bool = True
    error: str = ""
    gpu: bool = False
    device: str = "cpu"
    mem_total_bytes: int = 0  # VRAM on a GPU, else the machine's RAM
    mem_used_bytes: int = 0
    rss_bytes: int = 0
    started_unix: float = 0.0
    models: tuple[ModelView, ...] = ()
    queue_depth: int = 0
    active_sessions: int = 0
    rtf: float = 0.0
    fal_p50_ms: tuple[float, ...] = ()
    fal_p95_ms: tuple[float, ...] = ()
    jitter_p95_ms: tuple[float, ...] = ()

    def model(self, model_id: str) -> ModelView | None:
        return next((m for m in self.models if m.id == model_id), None)


@dataclass(frozen=True)
class DaemonView:
    """One row of the daemons panel. `note` says why a daemon is not up (its last log line)."""

    name: str
    kind: str  # worker | orchestrator
    addr: str
    health: str  # up | starting | restarting | stopping | unresponsive | down
    started_unix: float | None = None
    restarts: int = 0
    ping_ms: float | None = None
    note: str = ""  # raw: a JSON log line or an error message
    supervised: bool = False  # run by `duplexctl up`: restartable from the dashboard


@dataclass(frozen=True)
class SessionView:
    session_id: str
    state: str  # listening | speaking | barged_in
    turn: int = 0
    model: str = ""
    worker: str = ""
    transcript_tail: str = ""


@dataclass(frozen=True)
class TurnBar:
    """Mean ms per stage (STAGES order) of the turns that ended between two polls."""

    at_unix: float
    turns: int
    stages_ms: tuple[float, ...]


@dataclass(frozen=True)
class OrchestratorView:
    addr: str
    reachable: bool = True
    error: str = ""
    sessions: tuple[SessionView, ...] = ()
    bargein_total: int = 0
    bargein_p95_ms: float = 0.0
    turn_p50_ms: float = 0.0
    turns: tuple[TurnBar, ...] = ()  # oldest first
    end_of_turn: str = ""  # smart-turn | silence
    eot_p95_ms: float = 0.0  # the end-of-turn model's decision time
    speculations_used: int = 0
    speculations_discarded: int = 0
    warnings: tuple[str, ...] = ()  # degraded but serving (e.g. end of turn fell back)


@dataclass(frozen=True)
class LogLine:
    """One line of a daemon's log, as written (JSON for our daemons); the pane formats it."""

    seq: int  # increases with every line read, so a view can append only what is new
    daemon: str
    raw: str


@dataclass(frozen=True)
class Snapshot:
    taken_unix: float
    daemons: tuple[DaemonView, ...] = ()
    workers: tuple[WorkerView, ...] = ()
    orchestrator: OrchestratorView | None = None
    logs: tuple[LogLine, ...] = ()
    supervisor_pid: int | None = None  # the `duplexctl up` supervisor, when one is recorded
    supervisor_alive: bool = False
    state_dir: str = ""

    @property
    def nothing_running(self) -> bool:
        return not self.daemons

    def worker(self, addr: str) -> WorkerView | None:
        return next((w for w in self.workers if w.addr == addr), None)


_Named = TypeVar("_Named", WorkerView, DaemonView)


def unique_names(views: Sequence[_Named]) -> list[_Named]:
    """Workers started by hand all call themselves tts-worker@0: name those by address too."""
    counts = Counter(v.name for v in views)
    return [replace(v, name=f"{v.name} ({v.addr})") if counts[v.name] > 1 else v for v in views]
