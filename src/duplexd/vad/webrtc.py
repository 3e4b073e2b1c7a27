"""WebRTC VAD through `webrtcvad` (the `webrtcvad-wheels` distribution).

The classic GMM detector from Chromium: about 2 µs per 20 ms frame and no model file, but it
answers yes/no rather than a probability, and it is easily fooled by steady noise. It is the
fallback for machines where every microsecond counts, and a cross-check for Silero in tests.
Its `aggressiveness` (0-3) is the only knob; `threshold` has no effect since the answer is 0 or 1.
"""

from __future__ import annotations

import webrtcvad

from duplexd.audio.frames import FRAME_MS, frame_samples
from duplexd.audio.pcm import Int16Array
from duplexd.vad.base import VADParams, VoiceActivityDetector

__all__ = ["WebRTCVAD"]


class WebRTCVAD(VoiceActivityDetector):
    """WebRTC VAD at 16 kHz: one decision per 320-sample (20 ms) frame."""

    def __init__(self, params: VADParams | None = None) -> None:
        super().__init__(params)
        self._engine = webrtcvad.Vad(self.params.aggressiveness)

    @property
    def window_samples(self) -> int:
        return frame_samples(self.sample_rate, FRAME_MS)  # webrtcvad takes 10/20/30 ms

    def _speech_probability(self, window: Int16Array) -> float:
        frame = window.astype("<i2", copy=False).tobytes()
        return 1.0 if self._engine.is_speech(frame, self.sample_rate) else 0.0

    def _reset_engine(self) -> None:
        # The C detector keeps its own smoothing state (that ~100 ms internal hangover) and
        # has no reset call; a new instance is the only clean slate, and costs microseconds.
        self._engine = webrtcvad.Vad(self.params.aggressiveness)
