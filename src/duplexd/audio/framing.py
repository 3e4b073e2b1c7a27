"""Repacketize audio chunks of any size into exact frames."""

from __future__ import annotations

import numpy as np

from duplexd.audio.frames import FRAME_MS, SAMPLE_RATE, SAMPLE_WIDTH, frame_bytes
from duplexd.audio.pcm import Int16Array

__all__ = ["Repacketizer"]


class Repacketizer:
    """Collects s16le bytes and hands out whole frames.

    Engines emit chunks of arbitrary length (Piper: one per sentence; XTTS: a few hundred ms);
    the wire wants 20 ms. `push` returns every complete frame, `flush` pads the remainder with
    silence so the last syllable is not cut off.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, frame_ms: int = FRAME_MS) -> None:
        self.frame_bytes = frame_bytes(sample_rate, frame_ms)
        self._buf = bytearray()

    def push(self, pcm: bytes | Int16Array) -> list[bytes]:
        data = pcm.astype("<i2", copy=False).tobytes() if isinstance(pcm, np.ndarray) else pcm
        if len(data) % SAMPLE_WIDTH:
            raise ValueError("s16le audio must have an even number of bytes")
        self._buf.extend(data)
        n = len(self._buf) // self.frame_bytes
        frames = [
            bytes(self._buf[i * self.frame_bytes : (i + 1) * self.frame_bytes]) for i in range(n)
        ]
        del self._buf[: n * self.frame_bytes]
        return frames

    def flush(self) -> bytes | None:
        """The padded last frame, or None when nothing is pending."""
        if not self._buf:
            return None
        frame = bytes(self._buf) + b"\x00" * (self.frame_bytes - len(self._buf))
        self._buf.clear()
        return frame

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)

    def clear(self) -> None:
        self._buf.clear()
