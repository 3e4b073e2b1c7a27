"""The dashboard's data: every source polled into one immutable `Snapshot`.

`Poller.poll()` asks all daemons at once (gRPC GetCapabilities + ListModels per worker;
/healthz, /status and /metrics of the orchestrator), each under a deadline, so a hung daemon
costs one timeout, never a frozen screen. Daemons come from ``--worker``/``--orchestrator``
flags, else from the supervisor's ``state.json``; their JSON logs are tailed from the files the
state names. What a single poll cannot tell — latency over time, turn figures since the last
poll — the poller keeps as history between polls.

Widgets only ever see `Snapshot` objects (``views.py``), so tests build them by hand; the
history the poller keeps between polls is in ``history.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from duplexctl.supervise.state import DaemonRecord, FleetState, StateStore
from duplexctl.tui.history import LatencySeries, LogTail, TurnTracker, prometheus_samples
from duplexctl.tui.views import (
    STAGES,
    DaemonView,
    LogLine,
    ModelView,
    OrchestratorView,
    SessionView,
    Snapshot,
    TurnBar,
    WorkerView,
    unique_names,
)
from duplexd.errors import DuplexError
from duplexd.rpc import tts_pb2 as pb

if TYPE_CHECKING:
    import httpx

    from duplexd.rpc.client import TTSClient

# The views are re-exported: `duplexctl.tui.data` is where a Snapshot comes from.
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
        self._series: dict[str, LatencySeries] = {}
        self._history = history
        self._turns = TurnTracker()
        self._logs = LogTail()

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
        samples = prometheus_samples(metrics_text)
        return OrchestratorView(
            addr=addr,
            sessions=tuple(_session_view(s) for s in status.get("sessions", [])),
            bargein_total=int(samples.get(("duplex_orch_bargein_total", ""), 0)),
            bargein_p95_ms=float(status.get("bargein_pause_ms_p95") or 0.0),
            turn_p50_ms=float(status.get("turn_total_ms_p50") or 0.0),
            turns=self._turns.update(samples, self.clock()),
            end_of_turn=str((status.get("end_of_turn") or {}).get("engine") or ""),
            eot_p95_ms=float((status.get("end_of_turn") or {}).get("model_ms_p95") or 0.0),
            speculations_used=int(samples.get(("duplex_orch_speculations_total", "used"), 0)),
            speculations_discarded=int(
                samples.get(("duplex_orch_speculations_total", "discarded"), 0)
            ),
            warnings=tuple(str(w) for w in status.get("warnings") or ()),
        )

    def _with_history(self, view: WorkerView) -> WorkerView:
        if not view.reachable:
            return view
        series = self._series.setdefault(view.addr, LatencySeries(self._history))
        return series.add(view)


# -- turning answers into views ----------------------------------------------------------------


def _failed(target: _Target, error: str) -> _Probe:
    """A probe that got no answer; the panels show the daemon as unreachable, with `error`."""
    name = target.record.name if target.record is not None else target.addr
    if target.kind == "worker":
        return _Probe(False, error=error, worker=WorkerView(target.addr, name, False, error))
    return _Probe(False, error=error, orchestrator=OrchestratorView(target.addr, False, error))


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
                status=mi.status,
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
