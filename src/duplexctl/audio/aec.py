"""Acoustic echo cancellation with WebRTC's audio processing module (from the livekit package).

Without it the bot hears itself through the laptop's speakers and barges in on its own voice.
The APM needs two feeds of 10 ms frames: the far end (what the speaker is about to play, fed
from the output callback) and the near end (the mic, cleaned in place from the input
callback), plus the delay between them, which PortAudio's stream timestamps give us per
block. The two callbacks may run on different PortAudio threads, so one lock guards the APM.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from duplexd.audio.pcm import Int16Array

__all__ = ["BLOCK_MS", "EchoCanceller"]

BLOCK_MS = 10  # the only frame length the APM accepts


class EchoCanceller:
    """WebRTC AEC (+ noise suppression and a high-pass filter) on 10 ms int16 mono blocks."""

    def __init__(
        self,
        sample_rate: int = 48_000,
        *,
        noise_suppression: bool = True,
        high_pass_filter: bool = True,
        auto_gain_control: bool = False,
    ) -> None:
        from livekit import rtc  # the FFI library loads here, not at `duplexctl --help`

        self._rtc: Any = rtc
        self.sample_rate = sample_rate
        self.block = sample_rate * BLOCK_MS // 1000
        self._apm: Any = rtc.AudioProcessingModule(
            echo_cancellation=True,
            noise_suppression=noise_suppression,
            high_pass_filter=high_pass_filter,
            auto_gain_control=auto_gain_control,
        )
        self._lock = threading.Lock()
        self.error: Exception | None = None  # set once the APM failed; it is bypassed then
        self._output_latency_ms = 0.0
        self.far_blocks = 0
        self.near_blocks = 0

    def far_end(self, pcm: Int16Array, output_latency_ms: float = 0.0) -> None:
        """The block the speaker is about to play; `output_latency_ms` until it is heard."""
        if self.error is not None:
            return
        frame = self._frame(pcm)
        with self._lock:
            self._output_latency_ms = output_latency_ms
            try:
                self._apm.process_reverse_stream(frame)
            except Exception as exc:  # never raise on PortAudio's thread
                self.error = exc
            self.far_blocks += 1

    def near_end(self, pcm: Int16Array, input_latency_ms: float = 0.0) -> Int16Array:
        """The mic block with the speaker's echo removed (a new array; `pcm` itself if the
        APM has failed: a conversation with echo beats one without a microphone)."""
        if self.error is not None:
            return pcm
        frame = self._frame(pcm)
        with self._lock:
            # delay = (render - analyze) + (process - capture), as the APM defines it
            delay = round(self._output_latency_ms + input_latency_ms)
            try:
                self._apm.set_stream_delay_ms(max(0, min(delay, 500)))
                self._apm.process_stream(frame)
            except Exception as exc:  # never raise on PortAudio's thread
                self.error = exc
                return pcm
            self.near_blocks += 1
        out: Int16Array = np.frombuffer(frame.data, dtype=np.int16).copy()
        return out

    def _frame(self, pcm: Int16Array) -> Any:
        if pcm.size != self.block:
            raise ValueError(f"AEC needs {self.block}-sample blocks, got {pcm.size}")
        data = bytearray(np.ascontiguousarray(pcm, dtype=np.int16).tobytes())
        return self._rtc.AudioFrame(data, self.sample_rate, 1, self.block)
