"""The dashboard's data: every source polled into one immutable `Snapshot`.

`Poller.poll()` asks all daemons at once (gRPC GetCapabilities + ListModels per worker;
/healthz, /status and /metrics of the orchestrator), each under a deadline, so a hung daemon
costs one timeout, never a frozen screen. Daemons come from ``--worker``/``--orchestrator``
flags, else from the supervisor's ``state.json``; their JSON logs are tailed from the files the
state names. What a single poll cannot tell — latency over time, turn figures since the last
poll — the poller keeps as history between polls.

Widgets only ever see `Snapshot` objects, so tests build them by hand.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from duplexctl.supervise.state import DaemonRecord, FleetState, StateStore
from duplexd.errors import DuplexError
from duplexd.rpc import tts_pb2 as pb

if TYPE_CHECKING:
    import httpx

    from duplexd.rpc.client import TTSClient

__all__ = [
    "STAGES",
    "DaemonView",
    "LogLine",
    "ModelView",
    "OrchestratorView",
    "Poller",
    "SessionView",
    "Snapshot",
    "Sources",
    "TurnBar",
    "WorkerView",
    "unique_names",
]

# Turn stages in the order they happen (duplex_orch_turn_ms{stage=...}); their sum is the
# user-perceived gap from the end of speech to the first audio of the reply.
STAGES = ("end_of_speech", "asr", "llm_first_text", "tts_first_audio")
_LOG_KEEP = 1000  # lines kept for the log pane, across all daemons
_LOG_FIRST_READ = 32_768  # bytes read from the end of a log the first time we see it
_LOG_MAX_READ = 1 << 20  # a log that grew more than this between polls is skipped ahead


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


# -- where to look -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sources:
    """Explicit daemons win; without any, every daemon in the supervisor's state file."""

    workers: tuple[str, ...] = ()
    orchestrator: str | None = None
    state_dir: Path | None = None

    def store(self) -> StateStore:
        return StateStore(self.state_dir)


@dataclass(frozen=True)
class _Target:
    kind: str
    addr: str
    record: DaemonRecord | None = None


@dataclass
class _Probe:
    """What one daemon answered (or why it did not)."""

    ok: bool
    ping_ms: float | None = None
    error: str = ""
    uptime_s: float | None = None
    name: str = ""
    worker: WorkerView | None = None
    orchestrator: OrchestratorView | None = None


class Poller:
    """Gathers Snapshots; keeps connections and history between polls. One per dashboard."""

    def __init__(
        self,
        sources: Sources,
        *,
        timeout_s: float = 1.0,
        history: int = 120,
        api_key: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sources = sources
        self.store = sources.store()
        self.timeout_s = timeout_s
        self.api_key = api_key
        self.clock = clock
        self._clients: dict[str, TTSClient] = {}
        self._http: httpx.AsyncClient | None = None
        self._series: dict[str, _Series] = {}
        self._history = history
        self._turns = _TurnTracker()
        self._logs = _LogTail()

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def client(self, addr: str) -> TTSClient:
        """The (reused) channel to a worker, also for the dashboard's model actions."""
        if addr not in self._clients:
            from duplexd.rpc.client import TTSClient

            self._clients[addr] = TTSClient(addr, api_key=self.api_key, timeout_s=self.timeout_s)
        return self._clients[addr]

    async def poll(self) -> Snapshot:
        state = self.store.read()
        targets = self._targets(state)
        probes = await asyncio.gather(*(self._probe(t) for t in targets))
        now = self.clock()
        workers = [self._with_history(p.worker) for p in probes if p.worker is not None]
        orch = next((p.orchestrator for p in probes if p.orchestrator is not None), None)
        records = [t.record for t in targets if t.record is not None]
        daemons = [_daemon_view(t, p, now) for t, p in zip(targets, probes, strict=True)]
        return Snapshot(
            taken_unix=now,
            daemons=tuple(unique_names(daemons)),
            workers=tuple(unique_names(workers)),
            orchestrator=orch,
            logs=self._logs.read({r.name: Path(r.log) for r in records if r.log}),
            supervisor_pid=state.supervisor_pid if state else None,
            supervisor_alive=bool(state and state.supervisor_alive()),
            state_dir=str(self.store.root),
        )

    def _targets(self, state: FleetState | None) -> list[_Target]:
        records = {d.addr: d for d in state.daemons} if state else {}
        explicit = [("worker", a.removeprefix("grpc://")) for a in self.sources.workers]
        if self.sources.orchestrator:
            explicit.append(("orchestrator", self.sources.orchestrator))
        if explicit:
            return [_Target(kind, addr, records.get(addr)) for kind, addr in explicit]
        return [_Target(d.kind, d.addr, d) for d in state.daemons] if state else []

    async def _probe(self, target: _Target) -> _Probe:
        if target.record is not None and not target.record.alive():
            return _failed(target, "process not running")  # no point dialling it
        poll = self._poll_worker if target.kind == "worker" else self._poll_orchestrator
        try:
            # Each call has its own deadline too; this bounds the sum of them.
            probe = await asyncio.wait_for(poll(target.addr), 3 * self.timeout_s)
        except TimeoutError:
            return _failed(target, f"no answer within {3 * self.timeout_s:g} s")
        except DuplexError as exc:
            return _failed(target, exc.message)
        return probe if probe.ok else _failed(target, probe.error)

    async def _poll_worker(self, addr: str) -> _Probe:
        client = self.client(addr)
        started = time.perf_counter()
        cap = await client.capabilities(timeout=self.timeout_s)
        ping_ms = (time.perf_counter() - started) * 1000
        models = await client.list_models()
        view = _worker_view(addr, cap, models)
        uptime = self.clock() - cap.started_unix if cap.started_unix else None
        return _Probe(True, ping_ms, uptime_s=uptime, name=cap.worker_name, worker=view)

    async def _poll_orchestrator(self, addr: str) -> _Probe:
        import httpx

        if self._http is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._http = httpx.AsyncClient(timeout=self.timeout_s, headers=headers)
        base = f"http://{addr}"
        started = time.perf_counter()
        try:
            health = await self._http.get(f"{base}/healthz")
            ping_ms = (time.perf_counter() - started) * 1000
            status, metrics = await asyncio.gather(
                self._http.get(f"{base}/status"), self._http.get(f"{base}/metrics")
            )
            status.raise_for_status()  # e.g. 401: it wants DUPLEX_API_KEY
            metrics.raise_for_status()
            view = self._orchestrator_view(addr, status.json(), metrics.text)
        except (httpx.HTTPError, ValueError) as exc:
            return _Probe(ok=False, error=f"{type(exc).__name__}: {exc}".rstrip(": "))
        uptime = health.json().get("uptime_s")
        return _Probe(True, ping_ms, uptime_s=uptime, name="orchestrator", orchestrator=view)

    def _orchestrator_view(
        self, addr: str, status: Mapping[str, Any], metrics_text: str
    ) -> OrchestratorView:
        samples = _prometheus_samples(metrics_text)
        return OrchestratorView(
            addr=addr,
            sessions=tuple(_session_view(s) for s in status.get("sessions", [])),
            bargein_total=int(samples.get(("duplex_orch_bargein_total", ""), 0)),
            bargein_p95_ms=float(status.get("bargein_pause_ms_p95") or 0.0),
            turn_p50_ms=float(status.get("turn_total_ms_p50") or 0.0),
            turns=self._turns.update(samples, self.clock()),
        )

    def _with_history(self, view: WorkerView) -> WorkerView:
        if not view.reachable:
            return view
        series = self._series.setdefault(view.addr, _Series(self._history))
        return series.add(view)


class _Series:
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


# -- turning answers into views ----------------------------------------------------------------


def _failed(target: _Target, error: str) -> _Probe:
    """A probe that got no answer; the panels show the daemon as unreachable, with `error`."""
    name = target.record.name if target.record is not None else target.addr
    if target.kind == "worker":
        return _Probe(False, error=error, worker=WorkerView(target.addr, name, False, error))
    return _Probe(False, error=error, orchestrator=OrchestratorView(target.addr, False, error))


_Named = TypeVar("_Named", WorkerView, DaemonView)


def unique_names(views: Sequence[_Named]) -> list[_Named]:
    """Workers started by hand all call themselves tts-worker@0: name those by address too."""
    counts = Counter(v.name for v in views)
    return [replace(v, name=f"{v.name} ({v.addr})") if counts[v.name] > 1 else v for v in views]


def _worker_view(addr: str, cap: pb.GetCapResp, models: pb.ListModelsResp) -> WorkerView:
    hw, m = cap.hardware, cap.metrics
    vram = hw.gpu and hw.vram_gb > 0  # a GPU worker without VRAM figures shows its RAM
    if vram:
        total, used = int(hw.vram_gb * 2**30), int(hw.vram_used_bytes)
    else:
        total, used = int(hw.ram_total_bytes), int(hw.ram_total_bytes - hw.ram_available_bytes)
    return WorkerView(
        addr=addr,
        name=cap.worker_name or models.worker_name or addr,
        gpu=vram,
        device=hw.device or ("cuda" if hw.gpu else "cpu"),
        mem_total_bytes=total,
        mem_used_bytes=used,
        rss_bytes=int(hw.process_rss_bytes),
        started_unix=cap.started_unix,
        models=tuple(
            ModelView(
                id=mi.id,
                family=mi.family,
                state=_state_name(mi),
                refcount=mi.refcount,
                pinned=mi.pinned,
                is_default=mi.is_default,
                last_used_unix=mi.last_used_unix,
                ttl_remaining_ms=mi.ttl_remaining_ms,
                memory_bytes=int(mi.memory_bytes),
                load_ms=mi.load_ms,
                unavailable_reason=mi.unavailable_reason,
            )
            for mi in models.models
        ),
        queue_depth=m.queue_depth,
        active_sessions=m.active_sessions,
        rtf=m.rtf,
        fal_p50_ms=(m.fal_p50_ms,),
        fal_p95_ms=(m.fal_p95_ms,),
        jitter_p95_ms=(m.jitter_p95_ms,),
    )


def _state_name(mi: pb.ModelInfo) -> str:
    if mi.state == pb.MODEL_STATE_UNSPECIFIED:  # an older worker: only the flag
        return "resident" if mi.resident else "not_loaded"
    return pb.ModelState.Name(mi.state).lower()


def _session_view(data: Mapping[str, Any]) -> SessionView:
    return SessionView(
        session_id=str(data.get("session_id", "")),
        state=str(data.get("state", "")),
        turn=int(data.get("turn") or 0),
        model=str(data.get("model") or ""),
        worker=str(data.get("worker") or ""),
        transcript_tail=str(data.get("transcript_tail") or ""),
    )


def _daemon_view(target: _Target, probe: _Probe, now: float) -> DaemonView:
    rec = target.record
    health = "up" if probe.ok else "down"
    if rec is not None and not probe.ok:
        if rec.alive():
            health = "unresponsive"
        elif rec.state in ("starting", "restarting", "stopping"):
            health = rec.state
    started = now - probe.uptime_s if probe.uptime_s is not None else None
    if rec is not None and rec.started_at and probe.ok:
        started = rec.started_at  # the supervisor's clock: survives a worker's own restart
    note = "" if probe.ok else _last_log_line(rec) or probe.error
    return DaemonView(
        name=rec.name if rec is not None else (probe.name or target.addr),
        kind=target.kind,
        addr=target.addr,
        health=health,
        started_unix=started,
        restarts=rec.restarts if rec is not None else 0,
        ping_ms=probe.ping_ms,
        note=note,
        supervised=rec is not None,
    )


def _last_log_line(record: DaemonRecord | None) -> str:
    if record is None or not record.log:
        return ""
    from duplexctl.supervise.proc import log_tail

    lines = [ln for ln in log_tail(record.log, 5).splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# -- Prometheus ---------------------------------------------------------------------------------


def _prometheus_samples(text: str) -> dict[tuple[str, str], float]:
    """(sample name, the `stage` or `step` label) -> value; buckets are skipped."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not s.name.endswith("_bucket"):
                out[s.name, s.labels.get("stage") or s.labels.get("step") or ""] = s.value
    return out


class _TurnTracker:
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


class _LogTail:
    """Reads what each daemon log gained since the last poll (from near its end at first)."""

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
        self._offsets[path] = offset + complete
        return data[:complete].decode(errors="replace").splitlines()
