"""Audio core: exact framing, click-free streaming resampling, conversions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duplexd.audio import FRAME_BYTES, FRAME_SAMPLES, AudioFrame, Repacketizer, StreamResampler
from duplexd.audio.frames import frame_bytes, frame_samples
from duplexd.audio.pcm import dbfs, float_to_s16, peak, rms, s16_to_float
from duplexd.audio.resample import resample_once


def test_frame_contract() -> None:
    assert (FRAME_SAMPLES, FRAME_BYTES) == (960, 1920)
    assert frame_samples(16_000) == 320
    with pytest.raises(ValueError, match="does not divide"):
        frame_bytes(22_050, frame_ms=3)
    with pytest.raises(ValueError, match="expected 1920"):
        AudioFrame(b"\x00" * 100, seq=0)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c * 2 for c in cuts if 0 < c * 2 < len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=100, deadline=None)
@given(
    n_samples=st.integers(0, 5000),
    cuts=st.lists(st.integers(1, 5000), max_size=20),
)
def test_repacketizer_any_chunking_gives_same_frames(n_samples: int, cuts: list[int]) -> None:
    data = np.random.default_rng(n_samples).integers(-3000, 3000, n_samples).astype("<i2").tobytes()
    framer = Repacketizer()
    frames = [f for chunk in _chunks(data, cuts) for f in framer.push(chunk)]
    last = framer.flush()
    frames += [last] if last else []
    assert all(len(f) == FRAME_BYTES for f in frames)
    joined = b"".join(frames)
    assert joined[: len(data)] == data  # same samples, in order
    assert set(joined[len(data) :]) <= {0}  # the last frame is padded with silence
    assert len(frames) == -(-len(data) // FRAME_BYTES)


def test_repacketizer_rejects_odd_bytes_and_accepts_arrays() -> None:
    framer = Repacketizer()
    with pytest.raises(ValueError, match="even number"):
        framer.push(b"\x00")
    assert len(framer.push(np.zeros(FRAME_SAMPLES * 2 + 10, dtype=np.int16))) == 2
    assert framer.pending_bytes == 20


def _tone(rate: int, seconds: float = 0.5, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@settings(max_examples=40, deadline=None)
@given(
    rate=st.sampled_from([16_000, 22_050, 24_000, 44_100, 48_000]),
    cuts=st.lists(st.integers(1, 20_000), max_size=12),
)
def test_streaming_resampler_matches_one_shot(rate: int, cuts: list[int]) -> None:
    x = _tone(rate)
    points = sorted({c for c in cuts if 0 < c < len(x)})
    resampler = StreamResampler(rate)
    parts = [
        resampler.process(x[a:b]) for a, b in zip([0, *points], [*points, len(x)], strict=True)
    ]
    out = np.concatenate([*parts, resampler.flush()]).astype(np.int32)
    ref = resample_once(x, rate).astype(np.int32)
    assert abs(len(out) - len(ref)) <= 1  # no drift: lengths agree within rounding
    n = min(len(out), len(ref))
    assert np.max(np.abs(out[:n] - ref[:n])) <= 2  # same samples within s16 rounding


def test_resampler_has_no_clicks_at_chunk_boundaries() -> None:
    x = _tone(22_050, 1.0)
    resampler = StreamResampler(22_050)
    out = np.concatenate(
        [resampler.process(c) for c in np.array_split(x, 37)] + [resampler.flush()]
    )
    step = np.abs(np.diff(out.astype(np.int32)))
    # a 440 Hz tone at half scale moves at most ~950 per sample at 48 kHz; a click is far more
    assert step.max() < 1200
    assert len(out) == pytest.approx(48_000, abs=2)


def test_resampler_accepts_int16_and_passthrough() -> None:
    x = float_to_s16(_tone(48_000, 0.1))
    same = StreamResampler(48_000)
    assert np.array_equal(same.process(x), x)
    with pytest.raises(ValueError, match="positive"):
        StreamResampler(0)


def test_conversions_clip_and_levels() -> None:
    assert float_to_s16(np.array([2.0, -2.0, 0.0])).tolist() == [32767, -32768, 0]
    assert s16_to_float(np.array([32767], dtype=np.int16))[0] == pytest.approx(1.0)
    tone = _tone(48_000, 0.2)
    assert rms(tone) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
    assert rms(float_to_s16(tone)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
    assert peak(float_to_s16(tone).tobytes()) == pytest.approx(0.5, rel=0.01)
    assert rms(b"") == 0.0
    assert dbfs(0.0) == float("-inf")
    assert dbfs(1.0) == 0.0
