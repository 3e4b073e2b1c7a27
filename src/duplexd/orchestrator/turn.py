"""Turn-taking state and the figures each turn and barge-in records."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["BargeIn", "State", "TurnTimes", "ms_between"]


class State(enum.StrEnum):
    LISTENING = "listening"
    SPEAKING = "speaking"
    BARGED_IN = "barged_in"


def ms_between(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start) * 1000, 1)


@dataclass
class TurnTimes:
    """perf_counter() stamps of one user turn, from the end of speech to the first reply audio."""

    speech_end: float | None = None  # last voiced audio arrived
    endpoint: float | None = None  # silence long enough: the turn is over
    transcript: float | None = None  # final transcript ready
    asr_decode_ms: float | None = None
    first_text: float | None = None  # first reply text from the responder
    first_audio: float | None = None  # first reply frame handed to the client
    ended_by: str | None = None  # silence | model | unsure_ending | max_silence | text
    eot_model_ms: float | None = None  # the end-of-turn model's last decision, if asked
    speculative: bool = False  # the reply was started before the turn was confirmed
    discarded: int = 0  # speculative replies dropped during this turn (the user went on)
    speculation_started: float | None = None  # the used speculative reply began (transcript)
    speculation_ready: float | None = None  # its first frame arrived (held), if before release

    def extra(self) -> dict[str, object]:
        """How the turn ended and what speculation did (beside the figures, not histograms)."""
        return {
            "end_of_turn": self.ended_by, "eot_model_ms": _r(self.eot_model_ms),
            "speculative": self.speculative, "speculations_discarded": self.discarded,
            # where a speculative reply stood, from the end of speech: started, audio ready
            "speculation_started_ms": ms_between(self.speech_end, self.speculation_started),
            "speculation_ready_ms": ms_between(self.speech_end, self.speculation_ready),
        }  # fmt: skip

    def figures(self) -> dict[str, float | None]:
        # A speculative reply's text and audio were ready before the turn was confirmed: those
        # stages took no time after it (clamped at the transcript, never negative).
        first_text = self.first_text
        if first_text is not None and self.transcript is not None:
            first_text = max(first_text, self.transcript)
        return {
            "end_of_speech_ms": ms_between(self.speech_end, self.endpoint),
            "asr_ms": ms_between(self.endpoint, self.transcript),
            "asr_decode_ms": self.asr_decode_ms,
            "llm_first_text_ms": ms_between(self.transcript, first_text),
            "tts_first_audio_ms": ms_between(first_text, self.first_audio),
            "total_ms": ms_between(self.speech_end, self.first_audio),
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@dataclass
class BargeIn:
    turn: int
    speech_start: float  # estimated wall time the user's speech began
    onset: float  # VAD onset detected: PAUSE sent, flush sent, audio muted, in this loop turn
    pause_ack: float | None = None
    worker_last_frame: float | None = None  # last worker frame that arrived after the onset
    frames_after_pause: int = 0
    flushed_frames: int = 0
    outcome: str = "pending"  # pending | resumed | interrupted (sent as its own event)

    def figures(self) -> dict[str, float | int | str | None]:
        silent = self.worker_last_frame if self.worker_last_frame else self.onset
        return {
            "turn": self.turn,
            "speech_to_vad_ms": ms_between(self.speech_start, self.onset),
            "vad_to_pause_ack_ms": ms_between(self.onset, self.pause_ack),
            "vad_to_worker_silent_ms": ms_between(self.onset, silent),
            "vad_to_client_flush_ms": 0.0,  # flush goes out in the onset's own loop turn
            "frames_after_pause": self.frames_after_pause,
            "flushed_frames": self.flushed_frames,
        }
