"""Opus on the WebSocket link: PyAV's libopus, one packet per 20 ms frame, and the hello."""

from __future__ import annotations

import time

import numpy as np
import pytest

from duplexd.audio.frames import frame_bytes, frame_samples
from duplexd.audio.opus import OpusDecoder, OpusEncoder, opus_available
from duplexd.errors import InvalidArgument
from duplexd.orchestrator.protocol import Hello, pack_audio, parse_client_json, unpack_audio

pytestmark = pytest.mark.skipif(not opus_available(), reason="PyAV without libopus")


def _voice_like(seconds: float, rate: int) -> np.ndarray:
    """A vowel-ish signal: a 140 Hz buzz through a few formants, with a syllable envelope."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(a * np.sin(k * phase) for k, a in [(1, 1.0), (2, 0.6), (3, 0.4), (5, 0.25), (7, 0.1)])
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    return (x * envelope * 5000).astype(np.int16)


def _frames(x: np.ndarray, rate: int) -> list[bytes]:
    n = frame_samples(rate)
    return [x[i : i + n].astype("<i2").tobytes() for i in range(0, len(x) - n + 1, n)]


def _best_correlation(a: np.ndarray, b: np.ndarray, max_lag: int) -> float:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    best = 0.0
    for lag in range(max_lag):
        x, y = a[: len(a) - lag], b[lag : lag + len(a) - lag]
        n = min(len(x), len(y))
        best = max(best, float(np.corrcoef(x[:n], y[:n])[0, 1]))
    return best


def test_48k_round_trip_is_small_fast_and_faithful() -> None:
    x = _voice_like(2.0, 48_000)
    enc, dec = OpusEncoder(48_000), OpusDecoder(48_000)
    t0 = time.perf_counter()
    packets = [enc.encode(f) for f in _frames(x, 48_000)]
    out = [dec.decode_frame(p) for p in packets]
    per_frame_ms = (time.perf_counter() - t0) * 1000 / len(packets)
    assert len(packets) == len(out) == 100
    assert all(len(f) == frame_bytes(48_000) for f in out)  # one 1920-byte frame per packet
    sizes = [len(p) for p in packets]
    assert max(sizes) < 400 and np.mean(sizes) < 250, sizes  # ~32 kbps, vs 1920 bytes PCM
    assert per_frame_ms < 5, per_frame_ms  # ≈ 0.2-0.4 ms here
    y = np.frombuffer(b"".join(out), "<i2")
    # Opus delays by its lookahead (312 samples at 48 kHz); beyond that it is the same signal
    assert _best_correlation(x[4800:-4800], y[4800:-4800], 600) > 0.9


def test_16k_link_gets_whole_16k_frames_back() -> None:
    x = _voice_like(1.0, 16_000)
    enc, dec = OpusEncoder(16_000), OpusDecoder(16_000)
    frames_in = _frames(x, 16_000)
    out = [f for packet in map(enc.encode, frames_in) for f in dec.decode(packet)]
    assert all(len(f) == frame_bytes(16_000) for f in out)
    assert len(frames_in) - 2 <= len(out) <= len(frames_in)  # the resampler holds a few ms
    y = np.frombuffer(b"".join(out), "<i2")
    assert _best_correlation(x[1600:-1600], y[1600:-1600], 400) > 0.85


def test_bad_input_is_invalid_argument_and_the_decoder_survives() -> None:
    enc, dec = OpusEncoder(48_000), OpusDecoder(48_000)
    with pytest.raises(InvalidArgument, match="1920-byte frames"):
        enc.encode(b"\x00" * 100)
    with pytest.raises(InvalidArgument, match="not an Opus packet"):
        dec.decode(b"")
    with pytest.raises(InvalidArgument, match="not an Opus packet"):
        dec.decode(b"\x00" * 5000)
    with pytest.raises(InvalidArgument, match="Opus cannot encode at 44100"):
        OpusEncoder(44_100)
    # still decodes real packets afterwards
    packet = enc.encode(_frames(_voice_like(0.02, 48_000), 48_000)[0])
    assert len(dec.decode_frame(packet)) == 1920


def test_hello_negotiates_the_codec() -> None:
    hello = parse_client_json('{"type": "hello", "codec": "opus", "sample_rate": 48000}')
    assert isinstance(hello, Hello) and hello.codec == "opus"
    assert parse_client_json('{"type": "hello"}').codec == "pcm"  # type: ignore[union-attr]
    with pytest.raises(InvalidArgument, match=r"codec: Input should be 'pcm' or 'opus'"):
        parse_client_json('{"type": "hello", "codec": "g722"}')


def test_audio_messages_carry_opus_after_the_same_header() -> None:
    packet = OpusEncoder().encode(b"\x00" * 1920)
    message = pack_audio(7, 2, packet, last=True)
    assert unpack_audio(message, "opus") == (7, 2, 1, packet)
    with pytest.raises(InvalidArgument):
        unpack_audio(message)  # as PCM it is the wrong size
    with pytest.raises(InvalidArgument, match="no payload"):
        unpack_audio(message[:8], "opus")
