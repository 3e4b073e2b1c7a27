"""Opt-in session recording (`--record DIR`): audio is never written to disk otherwise.

Two mono WAVs per session, written as the audio flows (nothing accumulates in memory):
`<session>-user.wav` (16 kHz, what the mic sent) and `<session>-bot.wav` (48 kHz, what was
sent to the client).
"""

from __future__ import annotations

import wave
from pathlib import Path

__all__ = ["Recorder"]


class Recorder:
    def __init__(self, directory: Path, session_id: str, user_rate: int = 16_000) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.paths = (directory / f"{session_id}-user.wav", directory / f"{session_id}-bot.wav")
        self._user = _open(self.paths[0], user_rate)
        self._bot = _open(self.paths[1], 48_000)

    def user(self, pcm: bytes) -> None:
        self._user.writeframes(pcm)

    def bot(self, pcm: bytes) -> None:
        self._bot.writeframes(pcm)

    def close(self) -> None:
        self._user.close()
        self._bot.close()


def _open(path: Path, rate: int) -> wave.Wave_write:
    wav = wave.open(str(path), "wb")  # noqa: SIM115  # closed by Recorder.close
    wav.setnchannels(1)
    wav.setsampwidth(2)
    wav.setframerate(rate)
    return wav
