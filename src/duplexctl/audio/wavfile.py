"""WAV in and out for file conversations: any PCM WAV in, 48 kHz s16 out.

The input may come from anything (a phone recorder at 44.1 kHz stereo, espeak at 22.05 kHz,
a 24-bit studio file): it is mixed down to mono and resampled with soxr to the 16 kHz the
microphone link carries. The output is what the speaker would have played, 48 kHz mono s16,
or with `stereo` the user (left) against the bot (right) on one timeline, to hear overlaps.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt

from duplexd.audio.frames import ASR_SAMPLE_RATE, SAMPLE_RATE, SAMPLE_WIDTH
from duplexd.audio.pcm import Int16Array, float_to_s16
from duplexd.errors import InvalidArgument

__all__ = ["read_wav", "to_link_rate", "write_wav"]


def read_wav(path: Path) -> tuple[npt.NDArray[np.float32], int]:
    """(mono float32 samples in [-1, 1], sample rate) of a PCM WAV of 8/16/24/32 bits."""
    try:
        with wave.open(str(path), "rb") as wav:
            rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
            raw = wav.readframes(wav.getnframes())
    except FileNotFoundError:
        raise InvalidArgument(f"--input {path}: no such file") from None
    except (wave.Error, EOFError) as exc:
        raise InvalidArgument(f"--input {path}: not a PCM WAV file ({exc})") from None
    samples = _decode(raw, width).reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return samples.astype(np.float32), rate


def to_link_rate(samples: npt.NDArray[np.float32], rate: int) -> Int16Array:
    """Mono float samples at `rate` → 16 kHz int16, the microphone link's format."""
    import soxr

    if rate != ASR_SAMPLE_RATE:
        samples = np.asarray(soxr.resample(samples, rate, ASR_SAMPLE_RATE), dtype=np.float32)
    return float_to_s16(samples)


def write_wav(
    path: Path, speaker: Int16Array, mic: Int16Array | None = None, rate: int = SAMPLE_RATE
) -> None:
    """Mono `speaker`, or with `mic` a stereo file: mic left, speaker right."""
    if mic is not None:
        n = max(len(mic), len(speaker))
        frames = np.zeros((n, 2), np.int16)
        frames[: len(mic), 0] = mic
        frames[: len(speaker), 1] = speaker
    else:
        frames = speaker.reshape(-1, 1)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(frames.shape[1])
        wav.setsampwidth(SAMPLE_WIDTH)
        wav.setframerate(rate)
        wav.writeframes(frames.astype("<i2").tobytes())


def _decode(raw: bytes, width: int) -> npt.NDArray[np.float32]:
    if width == 1:  # 8-bit WAV is unsigned
        return ((np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0).astype(
            np.float32
        )
    if width == 2:
        return (np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0).astype(np.float32)
    if width == 3:  # little-endian 24-bit: widen to 32 by putting the bytes in the top three
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        x = (b[:, 0] << 8 | b[:, 1] << 16 | b[:, 2] << 24) >> 8
        return (x.astype(np.float32) / 8_388_608.0).astype(np.float32)
    if width == 4:
        return (np.frombuffer(raw, "<i4").astype(np.float32) / 2_147_483_648.0).astype(np.float32)
    raise InvalidArgument(f"WAV sample width of {width} bytes is not supported")
