"""Opus for the WebSocket link (`codec: "opus"` in the hello), through PyAV's libopus.

One Opus packet carries one 20 ms frame. The encoder takes exactly one frame of s16le mono PCM
at its rate (48 or 16 kHz: both are native Opus rates) and returns one packet, with no
lookahead buffering on our side; at 32 kbps a speech packet is about 80-150 bytes, against
1920 bytes of 48 kHz PCM. Opus always decodes at 48 kHz; the decoder resamples (streaming,
click-free) to the rate asked for and re-cuts the result into exact 20 ms frames, so a caller
gets whole frames whatever packet durations the peer chose (2.5 to 60 ms).

PyAV ships its own FFmpeg with libopus in its wheels: no system library is needed. Encoding and
decoding a frame costs about 0.2-0.4 ms, so both run inline on the event loop.
"""

from __future__ import annotations

import fractions
from typing import TYPE_CHECKING, Literal

import numpy as np

from duplexd.audio.frames import FRAME_MS, SAMPLE_RATE, frame_bytes, frame_samples
from duplexd.audio.resample import StreamResampler
from duplexd.errors import InvalidArgument

if TYPE_CHECKING:
    from av.audio.codeccontext import AudioCodecContext

__all__ = [
    "DEFAULT_BITRATE",
    "MAX_PACKET_BYTES",
    "OPUS_RATES",
    "OpusDecoder",
    "OpusEncoder",
    "opus_available",
]

DEFAULT_BITRATE = 32_000
OPUS_RATES = (8_000, 12_000, 16_000, 24_000, 48_000)
MAX_PACKET_BYTES = 1275 * 3  # RFC 6716: 1275 bytes per frame, up to 120 ms per packet
_DECODE_RATE = 48_000  # what libopus decodes to


def opus_available() -> bool:
    """PyAV with libopus is importable (it is a dependency; this guards broken installs)."""
    try:
        import av
    except ImportError:
        return False
    return "libopus" in av.codecs_available


def _libopus(mode: Literal["r", "w"]) -> AudioCodecContext:
    try:
        import av
    except ImportError:  # pragma: no cover - av is a dependency
        raise InvalidArgument(
            "Opus needs PyAV (the `av` package)", hint="pip install av, or use codec pcm"
        ) from None
    return av.CodecContext.create("libopus", mode)


class OpusEncoder:
    """20 ms frames of s16le mono PCM in, one Opus packet per frame out."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, *, bitrate: int = DEFAULT_BITRATE) -> None:
        if sample_rate not in OPUS_RATES:
            raise InvalidArgument(f"Opus cannot encode at {sample_rate} Hz")
        self.sample_rate = sample_rate
        self.frame_samples = frame_samples(sample_rate, FRAME_MS)
        self.frame_bytes = frame_bytes(sample_rate, FRAME_MS)
        ctx = _libopus("w")
        ctx.sample_rate = sample_rate
        ctx.format = "s16"
        ctx.layout = "mono"
        ctx.bit_rate = bitrate
        ctx.time_base = fractions.Fraction(1, sample_rate)
        ctx.options = {"application": "voip", "frame_duration": str(FRAME_MS)}
        self._ctx = ctx
        self._pts = 0
        self.packets = 0
        self.bytes_out = 0

    def encode(self, pcm: bytes) -> bytes:
        """One 20 ms frame -> one Opus packet."""
        from av import AudioFrame

        if len(pcm) != self.frame_bytes:
            raise InvalidArgument(
                f"Opus encoder takes {self.frame_bytes}-byte frames "
                f"(20 ms at {self.sample_rate} Hz), got {len(pcm)}"
            )
        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        frame = AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, self.sample_rate)
        self._pts += self.frame_samples
        packet = b"".join(bytes(p) for p in self._ctx.encode(frame))
        self.packets += 1
        self.bytes_out += len(packet)
        return packet


class OpusDecoder:
    """Opus packets in, exact 20 ms frames of s16le mono PCM at `sample_rate` out."""

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        self.sample_rate = sample_rate
        self.frame_samples = frame_samples(sample_rate, FRAME_MS)
        ctx = _libopus("r")
        ctx.sample_rate = _DECODE_RATE
        ctx.format = "s16"
        ctx.layout = "mono"
        self._ctx = ctx
        self._resampler = (
            StreamResampler(_DECODE_RATE, sample_rate) if sample_rate != _DECODE_RATE else None
        )
        self._fifo = np.zeros(0, np.int16)
        self.packets = 0

    def decode(self, packet: bytes) -> list[bytes]:
        """The whole 20 ms frames completed by this packet (usually exactly one).

        A packet that is empty, too large or not Opus raises InvalidArgument; the decoder
        stays usable for the next one.
        """
        from av.packet import Packet

        if not packet or len(packet) > MAX_PACKET_BYTES:
            raise InvalidArgument(f"not an Opus packet: {len(packet)} bytes")
        try:
            frames = self._ctx.decode(Packet(packet))
        except Exception as exc:  # av.error.InvalidDataError and friends
            raise InvalidArgument(f"not a valid Opus packet ({len(packet)} bytes): {exc}") from None
        self.packets += 1
        parts = [self._fifo]
        for frame in frames:
            pcm = np.asarray(frame.to_ndarray(), dtype=np.int16).reshape(-1)
            if self._resampler is not None:
                pcm = self._resampler.process(pcm)
            parts.append(pcm)
        buf = np.concatenate(parts)
        n = len(buf) // self.frame_samples
        out = [
            buf[i * self.frame_samples : (i + 1) * self.frame_samples].astype("<i2").tobytes()
            for i in range(n)
        ]
        self._fifo = buf[n * self.frame_samples :]
        return out

    def decode_frame(self, packet: bytes) -> bytes:
        """Exactly one 20 ms frame per packet (the server's audio: 20 ms packets at 48 kHz).

        Padded with silence or cut if the packet held another duration, so one message
        stays one frame for the caller's jitter buffer.
        """
        frames = self.decode(packet)
        if frames:
            extra = b"".join(frames[1:])
            if extra:  # a longer packet: keep the rest for the next call
                rest = np.frombuffer(extra, dtype="<i2").astype(np.int16)
                self._fifo = np.concatenate([rest, self._fifo])
            return frames[0]
        short, self._fifo = self._fifo, np.zeros(0, np.int16)  # a shorter packet: pad it
        padded = np.concatenate([short, np.zeros(self.frame_samples - len(short), np.int16)])
        return padded.astype("<i2").tobytes()
