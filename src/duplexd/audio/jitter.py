"""Client playout: an adaptive jitter buffer flushed instantly on barge-in.

Frames arrive in bursts (the worker leads real time by ~120 ms, the network jitters); the
speaker consumes one frame every 20 ms. The buffer starts playing once `target_ms` is queued,
conceals an underrun with a short fade instead of a click, then re-buffers. After an underrun
the target grows by one frame (up to `max_ms`); after a long clean run it shrinks back.

A frame may carry a tag (any object: the client tags each frame with the clause it speaks);
`last_tag` is the tag of the frame the last `pop` played, None when it played silence.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

import numpy as np

from duplexd.audio.frames import FRAME_BYTES, FRAME_MS

__all__ = ["JitterBuffer", "JitterStats"]

_SILENCE = bytes(FRAME_BYTES)
_SHRINK_AFTER_FRAMES = 250  # 5 s without an underrun


@dataclass
class JitterStats:
    played: int = 0
    underruns: int = 0
    concealed: int = 0
    overflow_dropped: int = 0
    flushed: int = 0


class JitterBuffer:
    def __init__(self, target_ms: int = 40, max_ms: int = 60) -> None:
        if not FRAME_MS <= target_ms <= max_ms:
            raise ValueError("need frame_ms <= target_ms <= max_ms")
        self.min_frames = target_ms // FRAME_MS
        self.max_frames = max_ms // FRAME_MS
        self.target_frames = self.min_frames
        self._frames: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._playing = False
        self._last = _SILENCE
        self._clean_run = 0
        self.last_tag: Any = None
        self.stats = JitterStats()

    @property
    def depth_ms(self) -> int:
        return len(self._frames) * FRAME_MS

    @property
    def playing(self) -> bool:
        return self._playing

    def push(self, pcm: bytes, tag: Any = None) -> None:
        if len(pcm) != FRAME_BYTES:
            raise ValueError(f"frame must be {FRAME_BYTES} bytes")
        self._frames.append((pcm, tag))
        # far more than the target queued (a burst after a stall): drop the oldest so latency
        # does not grow without bound
        while len(self._frames) > self.max_frames + 10:
            self._frames.popleft()
            self.stats.overflow_dropped += 1

    def flush(self) -> int:
        """Barge-in: drop everything queued, now. Returns frames dropped."""
        dropped = len(self._frames)
        self._frames.clear()
        self._playing = False
        self._last = _SILENCE
        self.stats.flushed += dropped
        return dropped

    def pop(self) -> bytes:
        """The frame to play at this 20 ms tick (silence or concealment when there is none)."""
        self.last_tag = None
        if not self._playing and len(self._frames) >= self.target_frames:
            self._playing = True
        if self._playing and self._frames:
            frame, self.last_tag = self._frames.popleft()
            self._last = frame
            self.stats.played += 1
            self._tick_clean()
            return frame
        if self._playing:  # ran dry mid-stream: an underrun
            self._playing = False
            self.stats.underruns += 1
            self.target_frames = min(self.target_frames + 1, self.max_frames)
            self._clean_run = 0
            return self._conceal()
        return _SILENCE

    def _tick_clean(self) -> None:
        self._clean_run += 1
        if self._clean_run >= _SHRINK_AFTER_FRAMES and self.target_frames > self.min_frames:
            self.target_frames -= 1
            self._clean_run = 0

    def _conceal(self) -> bytes:
        """The last frame faded to silence: softer than a hard cut to zero."""
        if self._last is _SILENCE:
            return _SILENCE
        self.stats.concealed += 1
        last = np.frombuffer(self._last, dtype="<i2").astype(np.float32)
        faded = last * np.linspace(0.5, 0.0, last.size, dtype=np.float32)
        self._last = _SILENCE
        return faded.astype("<i2").tobytes()
