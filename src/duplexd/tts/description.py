"""How a worker describes itself: one dataclass, rendered twice.

`describe(worker, addr)` reads the worker once; its gRPC server renders the result to
`GetCapResp` (`tts.server`) and its Redis announcer to JSON (`fleet.announce`), so the two
views of a worker can never disagree and neither edge calls the other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from duplexd import __version__
from duplexd.audio.frames import FRAME_MS, SAMPLE_RATE

if TYPE_CHECKING:
    from duplexd.tts.worker import Worker

__all__ = ["WorkerDescription", "describe"]


@dataclass(frozen=True, slots=True)
class WorkerDescription:
    name: str
    addr: str
    version: str
    started_unix: float
    # what its catalog can do
    zero_shot: bool
    lora: bool
    cpu_ok: bool
    languages: tuple[str, ...]
    emotive_zero_prompt: bool
    families: tuple[str, ...]
    # audio it sends
    sample_rate: int
    frame_ms: int
    # the machine
    gpu: bool
    device: str
    ram_total_bytes: int
    ram_available_bytes: int
    process_rss_bytes: int
    cpu_count: int
    # models and load
    resident_models: tuple[str, ...]
    default_model: str | None
    rtf: float
    queue_depth: int
    fal_p50_ms: float
    fal_p95_ms: float
    active_sessions: int
    frames_sent: int
    late_frames: int
    jitter_p95_ms: float
    described_unix: float


def describe(worker: Worker, addr: str) -> WorkerDescription:
    metas = list(worker.catalog)
    hw = worker.hardware()
    t = worker.telemetry
    return WorkerDescription(
        name=worker.name,
        addr=addr,
        version=__version__,
        started_unix=worker.started_unix,
        zero_shot=any("zero_shot" in m.tags for m in metas),
        lora=any(m.supports_lora for m in metas),
        cpu_ok=any(m.cpu_ok for m in metas),
        languages=tuple(sorted({lang for m in metas for lang in m.languages})),
        emotive_zero_prompt=any("expressive" in m.tags for m in metas),
        families=tuple(sorted({m.family for m in metas})),
        sample_rate=SAMPLE_RATE,
        frame_ms=FRAME_MS,
        gpu=bool(hw["gpu"]),
        device=str(hw["device"]),
        ram_total_bytes=int(hw["ram_total_bytes"]),
        ram_available_bytes=int(hw["ram_available_bytes"]),
        process_rss_bytes=int(hw["process_rss_bytes"]),
        cpu_count=int(hw["cpu_count"]),
        resident_models=tuple(worker.manager.resident_ids()),
        default_model=worker.manager.default_model_id,
        rtf=t.mean_rtf,
        queue_depth=worker.queue_depth(),
        fal_p50_ms=t.fal.p(50),
        fal_p95_ms=t.fal.p(95),
        active_sessions=len(worker.sessions),
        frames_sent=t.frames_sent,
        late_frames=t.late_frames,
        jitter_p95_ms=t.gaps.p(95),
        described_unix=time.time(),
    )
