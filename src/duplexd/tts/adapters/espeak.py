"""eSpeak NG (formant synthesis) through its command-line program: the CPU edge fallback.

It needs no weights, only the `espeak-ng` program (Debian: `apt install espeak-ng`), so it is the
model the worker can always fall back to and the second real family that hot swap, LRU and TTL
are exercised on.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from collections.abc import Iterator

import numpy as np

from duplexd.audio.pcm import Float32Array, Int16Array
from duplexd.errors import AdapterError, WeightsMissing
from duplexd.tts.adapters.base import TTSAdapter

__all__ = ["EspeakAdapter"]

_TIMEOUT_S = 30


class EspeakAdapter(TTSAdapter):
    family = "espeak"

    _binary: str | None = None
    _rate: int = 22050

    def _load(self) -> None:
        binary = shutil.which(str(self.meta.options.get("binary", "espeak-ng")))
        if binary is None:
            raise WeightsMissing(
                "espeak-ng is not installed", hint="apt-get install espeak-ng (or brew install …)"
            )
        self._binary = binary

    @property
    def sample_rate(self) -> int:
        return self._rate

    def _generate(
        self, text: str, voice: str | None, language: str | None
    ) -> Iterator[Float32Array | Int16Array]:
        if self._binary is None:
            raise AdapterError("espeak adapter used before load")
        speed = str(int(self.meta.options.get("speed_wpm", 165)))
        args = [self._binary, "-v", voice or "en-us", "-s", speed, "--stdout", "--", text]
        result = subprocess.run(args, capture_output=True, timeout=_TIMEOUT_S, check=False)
        if result.returncode != 0:
            raise AdapterError(f"espeak-ng failed: {result.stderr.decode(errors='replace')}")
        with wave.open(io.BytesIO(result.stdout)) as wav:
            self._rate = wav.getframerate()
            yield np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)

    def _close(self) -> None:
        self._binary = None
