"""Voice activity detection: the engine-independent state machine.

An engine only answers "how likely is this window speech?". Everything that turns those
answers into turn-taking events lives here, once, so Silero and WebRTC behave the same:

- buffering: callers push whatever the transport delivers (20 ms frames, odd-sized chunks);
  the engine needs fixed windows (Silero 512 samples, WebRTC 320).
- the stream clock: time is the count of samples consumed, never the wall clock, so the
  same audio always gives the same events, however it was chunked or how slow the machine is.
- debouncing: `min_speech_ms` keeps a click or cough from being an onset (which would barge
  in on the assistant), and `hangover_ms` keeps a breath between words from ending the turn.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from duplexd.audio.frames import ASR_SAMPLE_RATE
from duplexd.audio.pcm import Int16Array

__all__ = ["VADEvent", "VADParams", "VoiceActivityDetector"]


class VADParams(BaseModel):
    """Tuning shared by every engine; validated so a bad config fails at load, not mid-call."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(0.5, ge=0.0, le=1.0)
    """A window is speech when the engine's probability is at least this."""
    min_speech_ms: int = Field(60, ge=0)
    """Speech must last this long before an onset is reported."""
    hangover_ms: int = Field(300, ge=0)
    """Silence after speech must last this long before an offset is reported."""
    aggressiveness: int = Field(2, ge=0, le=3)
    """WebRTC only: 0 (lenient) … 3 (most eager to call audio non-speech)."""


@dataclass(frozen=True, slots=True)
class VADEvent:
    """A speech boundary, in stream time (ms since the first sample given to the detector).

    `t_ms` is when the detector *knew*: for an onset that is `min_speech_ms` (rounded up to
    whole windows) after `speech_start_ms`; for an offset it is `hangover_ms` after
    `speech_end_ms`. Latency metrics use `t_ms`; ASR trimming uses the other two.
    """

    kind: Literal["onset", "offset"]
    t_ms: int
    speech_start_ms: int
    probability: float
    speech_end_ms: int | None = None
    """Offsets only: where the silence that ended the segment began."""


class _State(enum.Enum):
    QUIET = "quiet"
    STARTING = "starting"  # speech seen, but not yet for min_speech_ms
    SPEAKING = "speaking"
    TRAILING = "trailing"  # silence seen after speech, not yet for hangover_ms


class VoiceActivityDetector(ABC):
    """Turns a 16 kHz int16 stream into onset/offset events.

    Subclasses implement `window_samples` and `_speech_probability`; they may override
    `_reset_engine` when the engine keeps recurrent state. Not thread-safe: one detector per
    audio stream, fed from one task.
    """

    sample_rate: int = ASR_SAMPLE_RATE

    def __init__(self, params: VADParams | None = None) -> None:
        self.params = params or VADParams()
        self._pending = np.zeros(0, dtype=np.int16)
        self._samples = 0  # samples consumed by whole windows: the stream clock
        self._state = _State.QUIET
        self._mark_ms = 0  # start of the current speech run (or of the trailing silence)
        self._speech_start_ms = 0
        self._last_probability = 0.0

    # --- what an engine provides -------------------------------------------------------

    @property
    @abstractmethod
    def window_samples(self) -> int:
        """Samples per decision; the base buffers input to exactly this size."""

    @abstractmethod
    def _speech_probability(self, window: Int16Array) -> float:
        """Probability in [0, 1] that `window` (exactly `window_samples` long) is speech."""

    def _reset_engine(self) -> None:  # noqa: B027 (optional hook, not abstract on purpose)
        """Forget engine state between unrelated streams; stateless engines need nothing."""

    # --- public API --------------------------------------------------------------------

    @property
    def window_ms(self) -> float:
        """Decision granularity: onsets and offsets are only ever this precise."""
        return self.window_samples * 1000 / self.sample_rate

    @property
    def speaking(self) -> bool:
        """True from an onset until its offset (so also during the hangover)."""
        return self._state in (_State.SPEAKING, _State.TRAILING)

    @property
    def last_probability(self) -> float:
        """The engine's answer for the most recent whole window (0.0 before the first)."""
        return self._last_probability

    @property
    def stream_ms(self) -> int:
        """Stream time at the end of the last whole window processed."""
        return self._ms(self._samples)

    def reset(self) -> None:
        """Start a new stream: clock to zero, buffered samples and engine state dropped."""
        self._reset_engine()
        self._pending = np.zeros(0, dtype=np.int16)
        self._samples = 0
        self._state = _State.QUIET
        self._mark_ms = self._speech_start_ms = 0
        self._last_probability = 0.0

    def end_segment(self) -> VADEvent | None:
        """The caller ended the turn before the hangover ran out (an end-of-turn model said
        the user was done): close the segment now, so that speech from here on is a new one
        with its own onset. Otherwise words resumed inside the hangover would continue a
        segment whose turn is over, and no onset would ever announce them. Returns the offset
        it closed with, or None if no segment was open."""
        if self._state not in (_State.SPEAKING, _State.TRAILING):
            self._state = _State.QUIET
            return None
        end_ms = self._mark_ms if self._state is _State.TRAILING else self.stream_ms
        self._state = _State.QUIET
        return VADEvent("offset", self.stream_ms, self._speech_start_ms, self._last_probability,
                        end_ms)  # fmt: skip

    def process(self, pcm16: Int16Array) -> list[VADEvent]:
        """Consume any number of samples; return the events completed by them, in order."""
        audio = np.concatenate([self._pending, _as_pcm16(pcm16)])
        n = self.window_samples
        whole = len(audio) - len(audio) % n
        events: list[VADEvent] = []
        for start in range(0, whole, n):
            event = self._step(audio[start : start + n])
            if event is not None:
                events.append(event)
        self._pending = audio[whole:].copy()
        return events

    # --- the state machine -------------------------------------------------------------

    def _ms(self, samples: int) -> int:
        return samples * 1000 // self.sample_rate

    def _step(self, window: Int16Array) -> VADEvent | None:
        start_ms = self._ms(self._samples)
        self._samples += len(window)
        prob = float(self._speech_probability(window))
        self._last_probability = prob
        if prob >= self.params.threshold:
            return self._on_speech(start_ms, prob)
        return self._on_silence(start_ms, prob)

    def _on_speech(self, start_ms: int, prob: float) -> VADEvent | None:
        if self._state is _State.QUIET:
            self._state, self._mark_ms = _State.STARTING, start_ms
        elif self._state is _State.TRAILING:
            self._state = _State.SPEAKING  # a pause, not the end: same segment
        if self._state is _State.STARTING and self.stream_ms - self._mark_ms >= (
            self.params.min_speech_ms
        ):
            self._state, self._speech_start_ms = _State.SPEAKING, self._mark_ms
            return VADEvent("onset", self.stream_ms, self._mark_ms, prob)
        return None

    def _on_silence(self, start_ms: int, prob: float) -> VADEvent | None:
        if self._state is _State.STARTING:
            self._state = _State.QUIET  # too short: a click, not speech
        elif self._state is _State.SPEAKING:
            self._state, self._mark_ms = _State.TRAILING, start_ms
        if self._state is _State.TRAILING and self.stream_ms - self._mark_ms >= (
            self.params.hangover_ms
        ):
            self._state = _State.QUIET
            return VADEvent("offset", self.stream_ms, self._speech_start_ms, prob, self._mark_ms)
        return None


def _as_pcm16(pcm16: Int16Array) -> Int16Array:
    """Accept int16 only: silently casting float audio would turn it into near-silence."""
    arr = np.asarray(pcm16)
    if arr.dtype != np.int16:
        raise TypeError(f"VAD expects int16 PCM, got {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"VAD expects mono (1-D) audio, got shape {arr.shape}")
    return arr
