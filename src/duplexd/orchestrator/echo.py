"""The echo guard: without client echo cancellation our own voice comes back through the mic,
and it must not barge in on the reply it is the echo of."""

from __future__ import annotations

import collections

from duplexd.audio.frames import FRAME_MS
from duplexd.audio.pcm import dbfs

__all__ = ["ECHO_LOSS_DB", "ECHO_WINDOW_MS", "EchoGuard"]

ECHO_LOSS_DB = 20.0  # assumed speaker -> mic attenuation
ECHO_WINDOW_MS = 500  # output that may still be echoing back into the mic


class EchoGuard:
    def __init__(self, *, enabled: bool, margin_db: float) -> None:
        self.enabled, self.margin_db = enabled, margin_db
        self._levels: collections.deque[float] = collections.deque(
            maxlen=ECHO_WINDOW_MS // FRAME_MS
        )

    def played(self, level: float) -> None:
        """A reply frame of RMS `level` went to the client."""
        self._levels.append(dbfs(level))

    def is_echo(self, mic_db: float) -> bool:
        """The mic is no louder than the echo of what we sent in the last half second."""
        if not self.enabled:
            return False
        # the echo at the mic may come from any frame sent in the last half second (lead,
        # client buffer, acoustic path): compare with the loudest of them
        loudest = max(self._levels, default=float("-inf"))
        return mic_db < loudest - ECHO_LOSS_DB + self.margin_db
