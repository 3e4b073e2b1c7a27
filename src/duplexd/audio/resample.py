"""Streaming resampling to the wire rate (soxr), click-free across chunk boundaries."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

from duplexd.audio.frames import SAMPLE_RATE
from duplexd.audio.pcm import Float32Array, Int16Array, float_to_s16

__all__ = ["StreamResampler", "resample_once"]


class StreamResampler:
    """Resample a stream chunk by chunk, keeping the filter state between chunks.

    Resampling each chunk on its own would restart the filter at every boundary (clicks) and
    round the output length per chunk (drift); soxr's ResampleStream carries both across.
    Input may be float32 in [-1, 1] or int16; output is int16 at `out_rate`.
    """

    def __init__(self, in_rate: int, out_rate: int = SAMPLE_RATE, quality: str = "HQ") -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._passthrough = in_rate == out_rate
        self._stream = (
            None
            if self._passthrough
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality)
        )

    def process(self, chunk: Float32Array | Int16Array) -> Int16Array:
        return self._run(chunk, last=False)

    def flush(self) -> Int16Array:
        """Drain the filter's delay line at the end of an utterance."""
        return self._run(np.zeros(0, dtype=np.float32), last=True)

    def _run(self, chunk: Float32Array | Int16Array, *, last: bool) -> Int16Array:
        x = _as_float(chunk)
        if self._stream is None:
            return float_to_s16(x)
        return float_to_s16(self._stream.resample_chunk(x, last=last))


def resample_once(
    samples: Float32Array | Int16Array, in_rate: int, out_rate: int = SAMPLE_RATE
) -> Int16Array:
    """Resample a whole signal in one call (reference for tests, offline tools)."""
    x = _as_float(samples)
    if in_rate == out_rate:
        return float_to_s16(x)
    return float_to_s16(soxr.resample(x, in_rate, out_rate, quality="HQ"))


def _as_float(chunk: npt.NDArray[np.generic]) -> Float32Array:
    if chunk.dtype == np.int16:
        return (chunk.astype(np.float32) / 32767.0).astype(np.float32)
    return np.ascontiguousarray(chunk, dtype=np.float32)
