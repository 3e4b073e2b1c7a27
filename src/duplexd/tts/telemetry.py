"""The worker's Prometheus metrics and the rolling figures it reports over gRPC and Redis."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from duplexd.metrics import LatencyWindow, counter, gauge, histogram_ms
from duplexd.tts.session import SynthStats

__all__ = ["WorkerTelemetry"]


@dataclass
class WorkerTelemetry:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    fal: LatencyWindow = field(default_factory=LatencyWindow)
    gaps: LatencyWindow = field(default_factory=LatencyWindow)
    rtf: LatencyWindow = field(default_factory=lambda: LatencyWindow(64))
    frames_sent: int = 0
    late_frames: int = 0

    def __post_init__(self) -> None:
        r = self.registry
        self.h_fal = histogram_ms(
            r, "duplex_tts_first_audio_ms", "text in -> first frame out", ["model"]
        )
        self.h_gap = histogram_ms(r, "duplex_tts_frame_gap_ms", "lateness of late frames")
        self.g_rtf = gauge(r, "duplex_tts_rtf", "real-time factor of the last synthesis", ["model"])
        self.c_frames = counter(r, "duplex_tts_frames_sent", "20 ms frames sent", ["model"])
        self.c_late = counter(r, "duplex_tts_late_frames", "frames sent after play time", ["model"])
        self.c_dropped = counter(r, "duplex_tts_dropped_frames", "frames dropped", ["model"])
        self.g_queue = gauge(r, "duplex_tts_queue_depth", "frames buffered across sessions")
        self.g_sessions = gauge(r, "duplex_tts_sessions", "open sessions")
        self.h_load = histogram_ms(r, "duplex_tts_model_load_ms", "load + warmup time", ["model"])
        self.g_resident = gauge(r, "duplex_tts_resident_models", "models resident")
        self.g_model_mem = gauge(r, "duplex_tts_model_memory_bytes", "memory per model", ["model"])
        self.g_rss = gauge(r, "duplex_tts_process_rss_bytes", "worker resident set size")
        self.c_control = counter(r, "duplex_tts_control", "control commands", ["command"])
        self.h_pause = histogram_ms(r, "duplex_tts_pause_ack_ms", "PAUSE received -> effective")

    def utterance_done(self, model: str, stats: SynthStats, rtf: float | None) -> None:
        if (fal := stats.first_audio_ms) is not None:
            self.fal.add(fal)
            self.h_fal.labels(model).observe(fal)
        for gap in stats.gaps_ms:
            self.gaps.add(gap)
            self.h_gap.observe(gap)
        if rtf is not None:
            self.rtf.add(rtf)
            self.g_rtf.labels(model).set(rtf)
        self.frames_sent += stats.frames_sent
        self.late_frames += stats.late_frames
        self.c_frames.labels(model).inc(stats.frames_sent)
        self.c_late.labels(model).inc(stats.late_frames)
        self.c_dropped.labels(model).inc(stats.dropped_frames)

    @property
    def mean_rtf(self) -> float:
        return self.rtf.p(50)
