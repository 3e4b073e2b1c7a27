"""What a suite gets: the worker (started on demand), in-process engines, the scale, progress.

The embedded worker is started the first time a suite asks for it, with
`duplexd.devkit.procs.start_daemon` in the run's temporary folder, and stopped when the run
ends; with ``--worker ADDR`` the bench only talks to that worker. In-process engines (the
reference the worker's figures are compared with) are loaded once per run, with the same
thread count a worker uses (``worker.engine_threads``), and closed at the end.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from duplexd.config import WorkerConfig, load_config, repo_root
from duplexd.devkit.procs import DaemonProc, start_daemon
from duplexd.errors import DuplexError
from duplexd.rpc.client import TTSClient

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from duplexd.tts.adapters.base import TTSAdapter
    from duplexd.tts.catalog import Catalog

__all__ = ["DEFAULT_MODELS", "BenchContext", "EngineRef", "Scale", "SuiteProgress", "scale_for"]

DEFAULT_MODELS: tuple[str, ...] = ("piper-en-us-joe", "espeak-en")

ScaleName = Literal["full", "quick", "tiny"]


@dataclass(frozen=True)
class Scale:
    """How much each suite measures. `tiny` (DUPLEX_BENCH_TINY=1) exists for the tests."""

    name: ScaleName
    tts_utterances: int
    concurrency_levels: tuple[int, ...]
    asr_sentences: int
    asr_full_grid: bool  # every voice x speed x noise; else en-us/175 clean + noisy only
    eos_utterances: int
    resident_load_repeats: int


_SCALES: dict[ScaleName, Scale] = {
    "full": Scale("full", 20, (1, 2, 4, 8, 12, 16, 20, 24), 8, True, 8, 10),
    "quick": Scale("quick", 5, (1, 2, 4, 8), 3, True, 3, 5),
    "tiny": Scale("tiny", 2, (1, 2), 1, False, 1, 3),
}


def scale_for(*, quick: bool, tiny: bool | None = None) -> Scale:
    if tiny is None:
        tiny = os.environ.get("DUPLEX_BENCH_TINY", "").strip().lower() in {"1", "true", "yes"}
    if tiny:
        return _SCALES["tiny"]
    return _SCALES["quick" if quick else "full"]


@dataclass
class EngineRef:
    """A model loaded in the bench process: the reference for the worker's figures."""

    adapter: TTSAdapter
    load_ms: float
    warmup_ms: float


class SuiteProgress:
    """One progress bar per suite; a no-op without a rich Progress (tests, --json only)."""

    def __init__(self, progress: Progress | None, name: str) -> None:
        self._progress = progress
        self._name = name
        self._task: TaskID | None = None

    def start(self, total: int, what: str = "") -> None:
        if self._progress is None:
            return
        desc = f"{self._name}: {what}" if what else self._name
        if self._task is None:
            self._task = self._progress.add_task(desc, total=total)
        else:
            self._progress.update(self._task, total=total, completed=0, description=desc)

    def step(self, what: str | None = None, n: int = 1) -> None:
        if self._progress is None or self._task is None:
            return
        desc = f"{self._name}: {what}" if what else None
        self._progress.update(self._task, advance=n, description=desc)

    def done(self) -> None:
        if self._progress is not None and self._task is not None:
            task = self._progress.tasks[self._task]
            total = task.total if task.total is not None else task.completed
            self._progress.update(self._task, completed=total, description=f"{self._name}: done")


@dataclass
class BenchContext:
    """Shared by every suite of one run (see the module docstring)."""

    scale: Scale
    workdir: Path
    models: tuple[str, ...] = ()
    worker_addr: str | None = None
    progress: Progress | None = None
    api_key: str | None = field(default_factory=lambda: os.environ.get("DUPLEX_API_KEY") or None)
    notes: list[str] = field(default_factory=list)
    current: SuiteProgress = field(default_factory=lambda: SuiteProgress(None, ""))
    started_embedded: bool = False
    """True once the bench started the worker itself (it may then force-unload its default)."""
    _owned: DaemonProc | None = None
    _extra: list[DaemonProc] = field(default_factory=list)
    _engines: dict[str, EngineRef] = field(default_factory=dict)
    _config: WorkerConfig | None = None
    _catalog: Catalog | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _start_error: DuplexError | None = None

    # -- the worker under test ------------------------------------------------------------

    @property
    def model_ids(self) -> tuple[str, ...]:
        return self.models or DEFAULT_MODELS

    async def worker(self) -> str:
        """The worker's address, starting the embedded default worker on first use."""
        async with self._lock:
            if self._start_error is not None:  # one failed start is enough for the whole run
                raise self._start_error
            if self.worker_addr is None:
                try:
                    proc = await asyncio.to_thread(start_daemon, "worker", self.workdir / "worker")
                except (RuntimeError, TimeoutError) as exc:
                    self._start_error = DuplexError(
                        f"the embedded worker did not start: {exc}",
                        hint="`duplexctl doctor` says what is missing",
                    )
                    raise self._start_error from None
                self._owned = proc
                self.started_embedded = True
                self.worker_addr = proc.addr
        return self.worker_addr

    async def client(self) -> TTSClient:
        """A new client to the worker under test (use it as ``async with``)."""
        return TTSClient(await self.worker(), api_key=self.api_key)

    async def start_worker(
        self, args: list[str], env: dict[str, str] | None = None, timeout_s: float = 60.0
    ) -> DaemonProc:
        """A dedicated extra worker (e.g. with a short TTL), stopped at the end of the run."""
        folder = self.workdir / f"worker-extra-{len(self._extra)}"
        proc = await asyncio.to_thread(
            functools.partial(start_daemon, "worker", folder, args, env=env, timeout_s=timeout_s)
        )
        self._extra.append(proc)
        return proc

    async def stop_worker(self, proc: DaemonProc) -> None:
        await asyncio.to_thread(proc.stop)
        if proc in self._extra:
            self._extra.remove(proc)

    # -- in-process reference engines ------------------------------------------------------

    @property
    def config(self) -> WorkerConfig:
        """The worker settings an embedded worker starts with (defaults < DUPLEX_* env)."""
        if self._config is None:
            self._config = load_config(WorkerConfig)
        return self._config

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = self.load_catalog(self.config.model_manager.effective_models_dir)
        return self._catalog

    def load_catalog(self, models_dir: Path) -> Catalog:
        """The catalog an embedded worker would read, with weights under `models_dir`."""
        from duplexd.tts.catalog import Catalog

        mm = self.config.model_manager
        return Catalog.load(
            _checkout_path(mm.catalog), _checkout_path(mm.voicepacks_dir), models_dir
        )

    async def engine(self, model_id: str) -> EngineRef:
        """`model_id` loaded (and warmed) in this process with the worker's thread count."""
        if model_id not in self._engines:
            self._engines[model_id] = await asyncio.to_thread(self._load_engine, model_id)
        return self._engines[model_id]

    def _load_engine(self, model_id: str) -> EngineRef:
        from duplexd.tts.adapters.registry import adapter_class
        from duplexd.tts.devices import resolve_device

        meta = self.catalog.get(model_id)
        cls = adapter_class(meta.family)
        device = resolve_device(self.config.worker.device, meta.device, uses_torch=cls.uses_torch)
        # A first, untimed load imports the engine's libraries (onnxruntime: ~0.5 s), which a
        # worker has done long before it reloads a model; the timed load below is like that.
        primer = cls(meta, device=device, threads=self.config.worker.engine_threads)
        primer.load()
        primer.close()
        adapter = cls(meta, device=device, threads=self.config.worker.engine_threads)
        started = time.perf_counter()
        adapter.load()
        loaded = time.perf_counter()
        adapter.warmup(self.config.model_manager.warmup_text)
        warmed = time.perf_counter()
        return EngineRef(adapter, (loaded - started) * 1000, (warmed - loaded) * 1000)

    # -- the end of the run ---------------------------------------------------------------

    async def aclose(self) -> None:
        for ref in self._engines.values():
            ref.adapter.close()
        self._engines.clear()
        for proc in [*self._extra, *([self._owned] if self._owned else [])]:
            await asyncio.to_thread(proc.stop)
        self._extra.clear()
        self._owned = None


def _checkout_path(path: Path) -> Path:
    """A config path as an embedded worker resolves it: from the cwd, else the checkout."""
    if path.is_absolute():
        return path
    for base in (Path.cwd(), repo_root()):
        if (base / path).exists():
            return base / path
    return path
