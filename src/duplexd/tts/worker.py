"""The TTS worker process: config, catalog, Model Manager, sessions, gRPC server, metrics.

`Worker` is the domain object (what the RPCs do); `duplexd.tts.server` is the thin gRPC edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from duplexd.config import DEFAULT_WORKER_NAME, WorkerConfig, load_config, resolve_path
from duplexd.errors import BusyError, DuplexError, FailedPrecondition, SessionNotFound
from duplexd.logging import get_logger
from duplexd.tts.adapters.base import TTSAdapter
from duplexd.tts.adapters.registry import adapter_class
from duplexd.tts.catalog import Catalog, ModelMeta
from duplexd.tts.devices import require_gpu, resolve_device
from duplexd.tts.manager import ModelHandle, ModelManager
from duplexd.tts.memory import process_rss_bytes
from duplexd.tts.readiness import UNAVAILABLE, Blocker, engine_blocker, weights_blocker
from duplexd.tts.session import WorkerSession, new_session_id
from duplexd.tts.telemetry import WorkerTelemetry

__all__ = ["Worker", "resolve_path"]  # resolve_path re-exported for older imports

log = get_logger("duplexd.tts.worker")


class Worker:
    def __init__(self, config: WorkerConfig, config_file: Path | None = None) -> None:
        self.config = config
        self.config_file = config_file
        # final once the port is bound (run_worker): a fleet worker's default name has it
        self.name = config.worker.name or DEFAULT_WORKER_NAME
        self.telemetry = WorkerTelemetry()
        self.executor = ThreadPoolExecutor(
            config.worker.synth_threads, thread_name_prefix="tts-synth"
        )
        self.catalog = self._read_catalog()
        # family -> its adapter class, or why there is none (entry points are slow to scan)
        self._adapters: dict[str, type[TTSAdapter] | DuplexError] = {}
        self.manager = ModelManager(
            self.catalog,
            config.model_manager,
            self._load_model,
            device=config.worker.device,
            device_of=self._resolve_device,
            attach_fn=self._attach_lora,
            check_fn=self._blocker,
        )
        self.manager.subscribe(self._on_model_event)
        self.sessions: dict[str, WorkerSession] = {}
        self.started_unix = time.time()
        self._reaper: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        # Import the catalog's adapter modules off the event loop once: ListModels then asks
        # each model's blocker (`readiness`) with lookups only.
        await asyncio.to_thread(self._import_adapters)
        await self.manager.start()
        self._reaper = asyncio.create_task(self._reap_idle_sessions(), name="tts-session-reaper")
        self._refresh_gauges()

    async def aclose(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for session in list(self.sessions.values()):
            self.end_session(session.id)
        await self.manager.aclose()
        self.executor.shutdown(wait=True, cancel_futures=True)

    # -- sessions --------------------------------------------------------------------------

    async def start_session(
        self, model_id: str, voice: str, language: str, session_id: str, *, unpaced: bool = False
    ) -> WorkerSession:
        """A session on `model_id`; `unpaced` ones get frames as fast as the engine makes them
        (a file being written), the rest real time plus `lead_ms`."""
        model_id = model_id or self.manager.default_model_id
        if session_id and (existing := self.sessions.get(session_id)) is not None:
            if existing.model_id != model_id:
                raise FailedPrecondition(
                    f"session {session_id} uses {existing.model_id}; models cannot be switched "
                    "inside a session",
                    hint="end the session and start a new one with the other model",
                )
            existing.touch()  # a client re-attaching (an orchestrator's keepalive) is activity
            return existing
        if len(self.sessions) >= self.config.worker.max_sessions:
            raise BusyError(
                f"worker {self.name} is at max_sessions={self.config.worker.max_sessions}",
                hint="try another worker or raise worker.max_sessions",
            )
        lease = await self.manager.acquire(model_id)
        try:
            adapter = lease.handle
            assert isinstance(adapter, TTSAdapter)
            adapter.check_request(voice or None, language or None)
        except BaseException:
            lease.release()
            raise
        session = WorkerSession(
            session_id or new_session_id(), lease, voice or None, language or None,
            unpaced=unpaced,
        )  # fmt: skip
        self.sessions[session.id] = session
        self._refresh_gauges()
        log.info("session started", session_id=session.id, model=model_id)
        return session

    def session(self, session_id: str) -> WorkerSession:
        try:
            session = self.sessions[session_id]
        except KeyError:
            raise SessionNotFound(f"no session {session_id!r} on worker {self.name}") from None
        session.touch()
        return session

    def end_session(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            raise SessionNotFound(f"no session {session_id!r} on worker {self.name}")
        session.close()
        self._refresh_gauges()
        log.info("session ended", session_id=session_id)

    async def _reap_idle_sessions(self) -> None:
        timeout = self.config.worker.session_idle_timeout_s
        while True:
            await asyncio.sleep(min(timeout / 4, 5.0))
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if session.state == "idle" and now - session.last_activity > timeout:
                    log.info("session idle timeout", session_id=session.id)
                    self.end_session(session.id)

    # -- reload ----------------------------------------------------------------------------

    def reload(self) -> int:
        """Re-read config, catalog and voicepacks; sessions keep their leases."""
        if self.config_file is not None:
            fresh = load_config(WorkerConfig, self.config_file)
            self.config.worker = fresh.worker.model_copy(
                update={"host": self.config.worker.host, "port": self.config.worker.port}
            )
        self.catalog = self._read_catalog()
        self._adapters.clear()
        importlib.invalidate_caches()  # an extra installed since start is found from now on
        self.manager.replace_catalog(self.catalog)
        log.info("reloaded", models=len(self.catalog))
        return len(self.catalog)

    # -- figures ---------------------------------------------------------------------------

    def queue_depth(self) -> int:
        return sum(
            s.utterance.queue_depth
            for s in self.sessions.values()
            if s.utterance and not s.utterance.done
        )

    def hardware(self) -> dict[str, float | int | bool | str]:
        vm = psutil.virtual_memory()
        return {
            "gpu": self._device().startswith("cuda"),
            "device": self._device(),
            "ram_total_bytes": vm.total,
            "ram_available_bytes": vm.available,
            "process_rss_bytes": process_rss_bytes(),
            "cpu_count": os.cpu_count() or 1,
        }

    def _refresh_gauges(self) -> None:
        t = self.telemetry
        t.g_sessions.set(len(self.sessions))
        t.g_resident.set(len(self.manager.resident_ids()))
        t.g_rss.set(process_rss_bytes())
        t.g_queue.set(self.queue_depth())

    # -- internals -------------------------------------------------------------------------

    def _device(self) -> str:
        """The worker's device for announcements: what resident models use, else the setting
        (`auto` is reported as cpu unless a resident model resolved to a GPU)."""
        devices = {s.device for s in self.manager.list() if s.state == "resident"}
        gpus = sorted(d for d in devices if d.startswith("cuda"))
        if gpus:
            return gpus[0]
        device = self.config.worker.device
        return "cpu" if device == "auto" else device

    def _read_catalog(self) -> Catalog:
        mm = self.config.model_manager
        return Catalog.load(
            resolve_path(mm.catalog, self.config_file),
            resolve_path(mm.voicepacks_dir, self.config_file),
            mm.effective_models_dir,
        )

    def _adapter(self, family: str) -> type[TTSAdapter]:
        """The family's adapter class (imported once), or the error saying why there is none."""
        found = self._adapters.get(family)
        if found is None:
            try:
                found = adapter_class(family)
            except DuplexError as exc:
                found = exc
            self._adapters[family] = found
        if isinstance(found, DuplexError):
            raise found
        return found

    def _import_adapters(self) -> None:
        for family in {meta.family for meta in self.catalog}:
            with contextlib.suppress(DuplexError):  # remembered: the model's blocker says it
                self._adapter(family)

    def _blocker(self, meta: ModelMeta) -> Blocker | None:
        """The Model Manager's CheckFn: why `meta` cannot load here, found without loading it.
        The first that applies: another family than this worker serves, no adapter, an engine
        that lives in its own environment, then the weights, then the engine's extra
        (`duplexd.tts.readiness`)."""
        only = self.config.worker.adapter
        if only and meta.family != only:
            error = FailedPrecondition(
                f"worker {self.name} serves only the {only!r} family",
                hint=f"load {meta.model_id} on a worker of the main environment",
            )
            return Blocker(UNAVAILABLE, error)
        try:
            cls = self._adapter(meta.family)
        except DuplexError as exc:
            return Blocker(UNAVAILABLE, exc)
        if cls.engine_hint:  # an engine of its own environment: nothing here makes it load
            env = engine_blocker(cls)
            if env is not None:
                return env
        return weights_blocker(meta) or engine_blocker(cls)

    def _resolve_device(self, meta: ModelMeta) -> str:
        """The Model Manager's DeviceFn (blocking: a torch family may import torch); the
        manager has asked `_blocker` first."""
        cls = self._adapter(meta.family)
        device = resolve_device(self.config.worker.device, meta.device, uses_torch=cls.uses_torch)
        require_gpu(meta.model_id, device, meta.needs_gpu)
        return device

    def _load_model(self, meta: ModelMeta) -> TTSAdapter:
        """The Model Manager's LoadFn: import the family, load, warm up (blocking)."""
        adapter = self._adapter(meta.family)(
            meta, device=self._resolve_device(meta), threads=self.config.worker.engine_threads
        )
        adapter.load()
        adapter.warmup(self.config.model_manager.warmup_text)
        return adapter

    def _attach_lora(self, base: ModelHandle, meta: ModelMeta) -> TTSAdapter:
        """The Model Manager's AttachFn: add a LoRA voice to its resident base. No warmup: the
        base is warm and an adapter adds only small matrices to layers already run."""
        assert isinstance(base, TTSAdapter)
        return base.attach_lora(meta)

    def _on_model_event(self, event: str, model_id: str) -> None:
        log.info("model event", change=event, model=model_id)
        status = self.manager.status(model_id) if model_id in self.catalog else None
        if event == "loaded" and status is not None:
            if status.load_ms is not None:
                self.telemetry.h_load.labels(model_id).observe(status.load_ms)
            self.telemetry.g_model_mem.labels(model_id).set(status.memory_bytes)
        if event in ("unloaded", "evicted"):
            self.telemetry.g_model_mem.labels(model_id).set(0)
        self._refresh_gauges()
