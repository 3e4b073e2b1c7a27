"""The orchestrator's Prometheus metrics: turn latency by stage, barge-in, ASR, sessions."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry

from duplexd.metrics import LatencyWindow, counter, gauge, histogram_ms

__all__ = ["OrchTelemetry"]


class OrchTelemetry:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.g_sessions = gauge(r, "duplex_orch_sessions", "open client sessions")
        self.h_turn = histogram_ms(r, "duplex_orch_turn_ms", "turn latency by stage", ["stage"])
        self.h_asr = histogram_ms(r, "duplex_orch_asr_decode_ms", "final ASR decode time")
        self.c_bargein = counter(r, "duplex_orch_bargein", "barge-ins")
        self.c_false_interruptions = counter(
            r, "duplex_orch_false_interruptions", "barge-ins resumed (cough, echo)"
        )
        self.h_bargein = histogram_ms(
            r, "duplex_orch_bargein_ms", "barge-in latency by step", ["step"]
        )
        self.c_errors = counter(r, "duplex_orch_errors", "errors sent to clients", ["code"])
        self.c_eot = counter(
            r, "duplex_orch_end_of_turn_decisions", "end-of-turn model decisions", ["result"]
        )  # result: complete | incomplete | overruled (by the transcript) | error | unsure
        # (complete, on an unsure last word: held to the silence rule)
        self.h_eot = histogram_ms(
            r, "duplex_orch_end_of_turn_model_ms", "end-of-turn model time per decision"
        )
        self.c_turn_end = counter(
            r, "duplex_orch_turn_ends", "how user turns ended", ["by"]
        )  # by: model | unsure_ending | max_silence | silence
        self.c_spec = counter(
            r, "duplex_orch_speculations", "speculative replies", ["outcome"]
        )  # outcome: started | used | discarded
        self.eot_model = LatencyWindow()
        self.turn_total = LatencyWindow()
        self.pause = LatencyWindow()

    def observe_turn(self, figures: Mapping[str, float | None]) -> None:
        for stage, value in figures.items():
            if value is not None:
                self.h_turn.labels(stage.removesuffix("_ms")).observe(value)
        if (total := figures.get("total_ms")) is not None:
            self.turn_total.add(total)

    def observe_barge_in(self, figures: Mapping[str, object]) -> None:
        for step in ("speech_to_vad_ms", "vad_to_pause_ack_ms", "vad_to_worker_silent_ms"):
            value = figures.get(step)
            if isinstance(value, int | float):
                self.h_bargein.labels(step.removesuffix("_ms")).observe(value)
        ack = figures.get("vad_to_pause_ack_ms")
        if isinstance(ack, int | float):
            self.pause.add(ack)
