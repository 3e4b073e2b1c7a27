"""The audio contract: the one place that says what a frame is.

Wire and output audio is 48 kHz mono s16le in 20 ms frames. Every adapter, the orchestrator
and the clients import these constants instead of repeating 960 or 1920 anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ASR_SAMPLE_RATE",
    "CHANNELS",
    "FRAME_BYTES",
    "FRAME_MS",
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "SAMPLE_WIDTH",
    "AudioFrame",
    "frame_bytes",
    "frame_samples",
]

FRAME_MS = 20
SAMPLE_RATE = 48_000
CHANNELS = 1
SAMPLE_WIDTH = 2  # bytes per sample, s16le
ASR_SAMPLE_RATE = 16_000  # what VAD and Whisper consume


def frame_samples(sample_rate: int = SAMPLE_RATE, frame_ms: int = FRAME_MS) -> int:
    """Samples in one frame; rates must divide evenly so frames never drift."""
    samples, rest = divmod(sample_rate * frame_ms, 1000)
    if rest:
        raise ValueError(f"{sample_rate} Hz does not divide into {frame_ms} ms frames")
    return samples


def frame_bytes(sample_rate: int = SAMPLE_RATE, frame_ms: int = FRAME_MS) -> int:
    return frame_samples(sample_rate, frame_ms) * SAMPLE_WIDTH * CHANNELS


FRAME_SAMPLES = frame_samples()
FRAME_BYTES = frame_bytes()


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """One 20 ms frame of s16le mono PCM with its position in the stream.

    `unit` counts the speakable text units (clauses) the frame belongs to, so a RESUME can
    restart at the next unit boundary and a client can tell what the listener actually heard.
    """

    pcm: bytes
    seq: int
    sample_rate: int = SAMPLE_RATE
    frame_ms: int = FRAME_MS
    unit: int = 0
    unit_text: str = ""
    is_last: bool = False

    def __post_init__(self) -> None:
        expected = frame_bytes(self.sample_rate, self.frame_ms)
        if len(self.pcm) != expected:
            raise ValueError(f"frame has {len(self.pcm)} bytes, expected {expected}")
