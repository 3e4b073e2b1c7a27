"""The speaker, the microphone and the PortAudio streams that drive them (48 kHz, 10 ms blocks).

PortAudio calls our callbacks on its own real-time thread, and a callback that blocks is an
audible glitch. So the callbacks only copy: the speaker's pops the jitter buffer (under a lock
that the asyncio side holds just long enough to push or flush a frame), the microphone's hands
its block to asyncio through `loop.call_soon_threadsafe`. Resampling to the link rate, framing
and sending happen on the event loop.

`AudioIO` opens ONE duplex stream when the mic and the speaker share a host API, and a stream
per direction otherwise. Duplex matters for echo cancellation: one callback receives the mic
block and renders the speaker block of the same period, so the echo canceller sees them in
lockstep even when the machine drops periods (an xrun drops both). With two streams an xrun
drops a block on one side only, the echo path's delay jumps, and the canceller never settles:
measured on JACK's dummy backend under load, duplex cancels the looped-back speaker fully, two
streams by only ~10 dB.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from duplexctl.audio.aec import BLOCK_MS, EchoCanceller
from duplexctl.audio.devices import Device, sounddevice
from duplexctl.client.heard import Clause
from duplexd.audio.frames import FRAME_BYTES, FRAME_MS, SAMPLE_RATE
from duplexd.audio.framing import Repacketizer
from duplexd.audio.jitter import JitterBuffer
from duplexd.audio.pcm import Int16Array, dbfs, rms
from duplexd.audio.resample import StreamResampler
from duplexd.errors import NoAudioDevice

__all__ = ["BLOCK", "AudioIO", "MicLevel", "Microphone", "Speaker"]

BLOCK = SAMPLE_RATE * BLOCK_MS // 1000  # 480 samples: one APM frame per callback
_SILENCE = bytes(FRAME_BYTES)


class Speaker:
    """Server audio → jitter buffer → the output device (mono, duplicated to ≤ 2 channels)."""

    def __init__(self, device: Device, *, aec: EchoCanceller | None = None) -> None:
        self.device = device
        self.aec = aec
        self.channels = min(2, device.max_output_channels)
        self.jitter = JitterBuffer()
        self._lock = threading.Lock()
        self._pending: Int16Array = np.zeros(0, np.int16)
        self._padding = 0  # silence we pushed to start a short tail: not "played audio"
        self.xruns = 0
        self.blocks = 0

    # -- the asyncio side ----------------------------------------------------------------

    def push(self, pcm: bytes, *, last: bool = False, clause: Clause | None = None) -> None:
        """Queue a frame; `clause` (the reply clause it speaks) counts it once it plays."""
        with self._lock:
            self.jitter.push(pcm, clause)
            # A reply's tail shorter than the playout target would wait for the next reply:
            # pad it with silence so it starts now.
            while last and not self.jitter.playing and self.jitter.depth_ms < self._target_ms:
                self.jitter.push(_SILENCE)
                self._padding += 1

    def flush(self) -> int:
        """Barge-in: drop everything not yet handed to the device (≤ one 10 ms block remains)."""
        with self._lock:
            self._pending = self._pending[:0]
            return self.jitter.flush()

    @property
    def idle(self) -> bool:
        with self._lock:
            return self.jitter.depth_ms == 0 and self._pending.size == 0

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Wait until everything queued has been played."""
        deadline = time.monotonic() + timeout_s
        # the PortAudio thread empties the buffer: polling at the frame rate is enough
        while not self.idle and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(FRAME_MS / 1000)

    @property
    def played_s(self) -> float:
        return max(self.jitter.stats.played - self._padding, 0) * FRAME_MS / 1000

    @property
    def underruns(self) -> int:
        return self.jitter.stats.underruns

    @property
    def _target_ms(self) -> int:
        return self.jitter.target_frames * FRAME_MS

    # -- the PortAudio thread --------------------------------------------------------------

    def render(self, outdata: Any, frames: int, t: Any, status: Any) -> None:
        if status.output_underflow:
            self.xruns += 1
        block = self._next(frames)
        outdata[:] = block[:, None]
        self.blocks += 1
        if self.aec is not None and frames == BLOCK:
            self.aec.far_end(block, max(t.outputBufferDacTime - t.currentTime, 0.0) * 1000)

    def _next(self, n: int) -> Int16Array:
        with self._lock:
            while self._pending.size < n:
                frame = np.frombuffer(self.jitter.pop(), dtype="<i2").astype(np.int16)
                clause: Clause | None = self.jitter.last_tag
                if clause is not None:
                    clause.played += 1  # what the user heard of the reply (client.heard)
                self._pending = np.concatenate([self._pending, frame])
            out, self._pending = self._pending[:n], self._pending[n:]
        return out


@dataclass
class MicLevel:
    """What the input callback saw: enough to tell a silent or dead microphone."""

    blocks: int = 0
    loud_blocks: int = 0  # blocks above the silence threshold
    last_dbfs: float = float("-inf")
    overflows: int = 0

    @property
    def seconds(self) -> float:
        return self.blocks * BLOCK_MS / 1000


class Microphone:
    """The input device → (AEC) → asyncio, as 20 ms link frames at `link_rate`."""

    SILENT_DBFS = -70.0

    def __init__(
        self, device: Device, *, link_rate: int = 16_000, aec: EchoCanceller | None = None
    ) -> None:
        self.device = device
        self.aec = aec
        self.level = MicLevel()
        self._resampler = StreamResampler(SAMPLE_RATE, link_rate)
        self._framer = Repacketizer(link_rate)
        self._queue: asyncio.Queue[Int16Array] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop that receives the blocks (set before the stream starts)."""
        self._loop = loop

    async def frames(self) -> AsyncIterator[bytes]:
        """20 ms s16le frames at the link rate, as the device delivers them."""
        while True:
            block = await self._queue.get()
            for frame in self._framer.push(self._resampler.process(block)):
                yield frame

    # -- the PortAudio thread --------------------------------------------------------------

    def capture(self, indata: Any, frames: int, t: Any, status: Any) -> None:
        if status.input_overflow:
            self.level.overflows += 1
        block: Int16Array = np.array(indata[:, 0], dtype=np.int16)  # a copy: PortAudio reuses it
        level = dbfs(rms(block))
        self.level.blocks += 1
        self.level.last_dbfs = level
        if level > self.SILENT_DBFS:
            self.level.loud_blocks += 1
        if self.aec is not None and frames == BLOCK:
            block = self.aec.near_end(block, max(t.currentTime - t.inputBufferAdcTime, 0.0) * 1000)
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the talk is over
                loop.call_soon_threadsafe(self._queue.put_nowait, block)


class AudioIO:
    """Opens and closes the PortAudio streams for a speaker and/or a microphone."""

    def __init__(self, speaker: Speaker | None = None, mic: Microphone | None = None) -> None:
        self.speaker = speaker
        self.mic = mic
        self.duplex = False
        self._streams: list[Any] = []

    def start(self) -> None:
        """Open the streams (duplex when possible); `NoAudioDevice` if a device refuses."""
        if self.mic is not None:
            self.mic.bind(asyncio.get_running_loop())
        sd = sounddevice()
        spk, mic = self.speaker, self.mic
        try:
            if spk is not None and mic is not None and spk.device.hostapi == mic.device.hostapi:
                with contextlib.suppress(sd.PortAudioError, ValueError):  # then one per side
                    self._open_duplex(sd, spk, mic)
                    return
            if spk is not None:
                self._open(sd.OutputStream, spk.device, spk.channels, spk.render, "speaker")
            if mic is not None:
                self._open(sd.InputStream, mic.device, 1, mic.capture, "microphone")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for stream in self._streams:
            with contextlib.suppress(Exception):  # a device unplugged meanwhile
                stream.stop()
                stream.close()
        self._streams.clear()

    def _open_duplex(self, sd: Any, spk: Speaker, mic: Microphone) -> None:
        def callback(indata: Any, outdata: Any, frames: int, t: Any, status: Any) -> None:
            spk.render(outdata, frames, t, status)  # the far end first: it explains the echo
            mic.capture(indata, frames, t, status)

        stream = sd.Stream(
            samplerate=SAMPLE_RATE, blocksize=BLOCK, device=(mic.device.index, spk.device.index),
            channels=(1, spk.channels), dtype="int16", latency="low", callback=callback,
        )  # fmt: skip
        try:
            stream.start()
        except BaseException:
            stream.close()
            raise
        self._streams.append(stream)
        self.duplex = True

    def _open(self, cls: Any, device: Device, channels: int, callback: Any, what: str) -> None:
        sd = sounddevice()
        try:
            stream = cls(
                samplerate=SAMPLE_RATE, blocksize=BLOCK, device=device.index, channels=channels,
                dtype="int16", latency="low", callback=callback,
            )  # fmt: skip
            stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            raise NoAudioDevice(
                f"cannot open the {what} {device.name!r}: {exc}",
                hint="check the device and permissions (`duplexctl talk --list-devices`)",
            ) from None
        self._streams.append(stream)
