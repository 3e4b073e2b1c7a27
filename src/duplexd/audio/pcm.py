"""Sample-format conversions and level helpers (float32 in [-1, 1] <-> s16)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["Float32Array", "Int16Array", "dbfs", "float_to_s16", "peak", "rms", "s16_to_float"]

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]

_S16_MAX = 32767.0


def float_to_s16(samples: npt.ArrayLike) -> Int16Array:
    """Scale to s16 with clipping, so an engine that overshoots 1.0 clips instead of wrapping."""
    x = np.asarray(samples, dtype=np.float32)
    out: Int16Array = np.clip(np.rint(x * _S16_MAX), -32768, 32767).astype(np.int16)
    return out


def s16_to_float(samples: Int16Array | bytes) -> Float32Array:
    x = np.frombuffer(samples, dtype=np.int16) if isinstance(samples, bytes) else samples
    return (x.astype(np.float32) / _S16_MAX).astype(np.float32)


def rms(samples: Int16Array | Float32Array | bytes) -> float:
    """Root mean square on the float scale (0..1); 0.0 for empty input."""
    x = _as_float(samples)
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def peak(samples: Int16Array | Float32Array | bytes) -> float:
    x = _as_float(samples)
    return float(np.max(np.abs(x))) if x.size else 0.0


def dbfs(level: float) -> float:
    """Level (0..1) in dB full scale; silence is -inf rather than an error."""
    return float(20.0 * np.log10(level)) if level > 0 else float("-inf")


def _as_float(samples: Int16Array | Float32Array | bytes) -> Float32Array:
    if isinstance(samples, np.ndarray) and np.issubdtype(samples.dtype, np.floating):
        return np.asarray(samples, dtype=np.float32)
    return s16_to_float(samples)  # type: ignore[arg-type]  # the branch above took floats
