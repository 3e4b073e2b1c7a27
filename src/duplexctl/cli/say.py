"""`duplexctl say TEXT`: speak through a worker, to the speakers or to a WAV file.

The quickest end-to-end check of a worker: it opens a session, streams the text, plays (or
writes) the 20 ms frames as they arrive and reports the first-audio latency, the time from
sending the text to the first frame, which is what a caller of the voice stack feels. For a
file the worker does not pace the frames to real time: it writes as fast as the engine goes.
"""

# grpc and sounddevice load inside the command: `--help` stays instant

from __future__ import annotations

import asyncio
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import typer

from duplexctl.cli._common import console, err_console, fail
from duplexd.errors import DuplexError, InvalidArgument, NoAudioDevice

if TYPE_CHECKING:
    from duplexctl.client.fleet import WorkerTarget

__all__ = ["say"]

_NO_DEVICE_HINT = "write a file instead: `duplexctl say TEXT --out speech.wav`"


def say(
    text: Annotated[str, typer.Argument(help="What to say.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Model id (default: the worker's default).")
    ] = "",
    voice: Annotated[str, typer.Option("--voice", "-v", help="Voice within the model.")] = "",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write a 48 kHz mono 16-bit WAV instead of playing (as fast as the engine goes).",
        ),
    ] = None,
    worker: Annotated[
        str | None,
        typer.Option(
            "--worker", "-w", help="Daemon name or HOST:PORT (default: the first started worker)."
        ),
    ] = None,
) -> None:
    """Speak TEXT through a TTS worker and report first-audio latency.

    [bold]Examples[/bold]

      duplexctl say "Hello there"                       play on the default output device

      duplexctl say "Hello there" --out hello.wav       write a WAV file (no sound card needed)

      duplexctl say "Hi" -m espeak-en -w tts-worker@1   another model, another worker
    """
    from duplexctl.client.fleet import resolve_workers

    if not text.strip():
        fail(InvalidArgument("nothing to say: TEXT is empty"))
    try:
        target = resolve_workers(worker)[0]
        sink: Sink = WavSink(out) if out is not None else SpeakerSink()
    except DuplexError as exc:
        fail(exc)
    done = False
    try:
        with err_console.status(f"speaking through {target} …"):
            result = asyncio.run(_speak(target, text, model, voice, sink, unpaced=out is not None))
        done = True
    except DuplexError as exc:
        fail(exc)
    finally:
        sink.close()
        if not done and out is not None:
            out.unlink(missing_ok=True)  # no half-written WAV left behind
    dest = f" → {out}" if out is not None else ""
    console.print(
        f"first audio {result.first_audio_ms:.0f} ms · {result.audio_s:.2f} s of audio · "
        f"{result.model_id} on {result.worker}{dest}"
    )


@dataclass(frozen=True)
class SayResult:
    first_audio_ms: float
    audio_s: float
    model_id: str
    worker: str


async def _speak(
    target: WorkerTarget, text: str, model: str, voice: str, sink: Sink, *, unpaced: bool
) -> SayResult:
    """`unpaced`: the worker sends frames as fast as it makes them (a file needs no pacing)."""
    from duplexctl.client.fleet import connect
    from duplexd.audio.frames import SAMPLE_RATE, SAMPLE_WIDTH  # the package imports numpy

    async with connect(target) as client:
        session = await client.start_session(model_id=model, voice=voice, unpaced=unpaced)
        if session.sample_rate != SAMPLE_RATE:
            raise DuplexError(f"worker sends {session.sample_rate} Hz; expected {SAMPLE_RATE}")
        first_ms: float | None = None
        samples = 0
        started = time.perf_counter()
        try:
            async for frame in client.say(session.session_id, text):
                if first_ms is None:
                    first_ms = (time.perf_counter() - started) * 1000
                await sink.write(frame.pcm)
                samples += len(frame.pcm) // SAMPLE_WIDTH
        finally:
            await client.end_session(session.session_id)
        await sink.drain()
    if first_ms is None:
        raise DuplexError("the worker sent no audio")
    worker = session.worker_name or target.name
    return SayResult(first_ms, samples / SAMPLE_RATE, session.model_id, worker)


class Sink(Protocol):
    async def write(self, pcm: bytes) -> None: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...


class WavSink:
    """48 kHz mono s16 WAV, written frame by frame."""

    def __init__(self, path: Path) -> None:
        from duplexd.audio.frames import CHANNELS, SAMPLE_RATE, SAMPLE_WIDTH

        if not path.parent.is_dir():
            raise InvalidArgument(f"--out {path}: directory {path.parent} does not exist")
        self._wav = wave.open(str(path), "wb")  # noqa: SIM115  # closed in close()
        self._wav.setnchannels(CHANNELS)
        self._wav.setsampwidth(SAMPLE_WIDTH)
        self._wav.setframerate(SAMPLE_RATE)

    async def write(self, pcm: bytes) -> None:
        self._wav.writeframes(pcm)

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self._wav.close()


class SpeakerSink:
    """The default output device via PortAudio; fails early and clearly without one."""

    def __init__(self) -> None:
        from duplexd.audio.frames import CHANNELS, SAMPLE_RATE

        try:
            import sounddevice as sd
        except OSError as exc:  # the PortAudio library itself is missing
            raise NoAudioDevice(f"cannot play audio: {exc}", hint=_NO_DEVICE_HINT) from None
        try:
            sd.query_devices(kind="output")
            self._stream: Any = sd.RawOutputStream(
                samplerate=SAMPLE_RATE, channels=CHANNELS, dtype="int16"
            )
            self._stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            raise NoAudioDevice(f"no audio output device ({exc})", hint=_NO_DEVICE_HINT) from None

    async def write(self, pcm: bytes) -> None:
        # Blocks while PortAudio's buffer is full; off the loop so gRPC keeps receiving.
        await asyncio.to_thread(self._stream.write, pcm)

    async def drain(self) -> None:
        await asyncio.to_thread(self._stream.stop)  # stop() plays out what is buffered

    def close(self) -> None:
        self._stream.close()
