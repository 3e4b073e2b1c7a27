"""Audio core shared by the daemons and the console: frames, framing, resampling, levels."""

from duplexd.audio.frames import (
    ASR_SAMPLE_RATE,
    FRAME_BYTES,
    FRAME_MS,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    AudioFrame,
)
from duplexd.audio.framing import Repacketizer
from duplexd.audio.resample import StreamResampler, resample_once

__all__ = [
    "ASR_SAMPLE_RATE",
    "FRAME_BYTES",
    "FRAME_MS",
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "AudioFrame",
    "Repacketizer",
    "StreamResampler",
    "resample_once",
]
