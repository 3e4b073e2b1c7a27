"""`duplexctl talk`: a conversation through the microphone and speakers, typed, or from a file.

Three ways in, one protocol:

- the microphone (default): 48 kHz device audio, echo-cancelled unless `--headphones`,
  resampled to the link rate and sent in 20 ms frames; the reply plays through an adaptive
  jitter buffer that a barge-in flushes at once;
- typed lines (`--text`): each line of stdin is a user turn; the reply plays (or, with no
  output device, is only printed);
- a WAV file (`--input q.wav`): the file is the microphone, in real time; then it listens
  until every reply has played out and `--tail` seconds passed quietly (at most `--max-wait`
  seconds, and it says so when that cuts a reply short); `--output a.wav` gets what the
  speaker would have played on the same timeline, `--events` every event.

The bot's lines are what the speaker played: a reply cut by a barge-in shows the words that
played and `⟂` (the events file has it as `heard` in each `turn` record).

With no `--url` (or DUPLEX_ORCHESTRATOR) it talks to the stack `duplexctl up` started (any
ports), else to one on 127.0.0.1:8080, and starts a private embedded one for the length of the
command when there is none. `--url` takes HOST:PORT or a daemon name (`duplexctl status`).
"""

# numpy, sounddevice, aiohttp and livekit load inside the command: `--help` stays instant

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.live import Live
from rich.text import Text

from duplexctl.cli._common import console, err_console, fail, table
from duplexd.errors import DaemonUnavailable, DuplexError, InvalidArgument, NoAudioDevice

if TYPE_CHECKING:
    from duplexctl.audio.devices import Device
    from duplexctl.audio.status import StatusView
    from duplexctl.audio.streams import Microphone, Speaker
    from duplexctl.client.ws import VoiceClient

__all__ = ["talk"]

_LINK_RATES = (16_000, 48_000)
T = TypeVar("T")


def talk(
    input_: Annotated[
        str | None,
        typer.Option(
            "--input",
            "-i",
            "--input-device",
            help="Microphone: device index or name substring. A .wav file: use it as the mic.",
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            "--output-device",
            help="Speaker: device index or name substring. With --input FILE: a .wav to write.",
        ),
    ] = None,
    events: Annotated[
        Path | None, typer.Option("--events", help="Write every event as a JSON line here.")
    ] = None,
    list_devices: Annotated[
        bool, typer.Option("--list-devices", help="List sound devices and exit.")
    ] = False,
    text: Annotated[
        bool, typer.Option("--text", help="Type instead of speak: one line of stdin per turn.")
    ] = False,
    codec: Annotated[
        str, typer.Option("--codec", help="audio on the link: pcm, or opus (~10x less bandwidth)")
    ] = "pcm",
    headphones: Annotated[
        bool,
        typer.Option(
            "--headphones", help="No echo cancellation (the server's echo guard is used instead)."
        ),
    ] = False,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            envvar="DUPLEX_ORCHESTRATOR",
            help="Orchestrator HOST:PORT or daemon name (default: the one `duplexctl up` "
            "started, else 127.0.0.1:8080, else an embedded one is started).",
        ),
    ] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="TTS model id.")] = None,
    voice: Annotated[str | None, typer.Option("--voice", "-v", help="Voice of the model.")] = None,
    language: Annotated[
        str | None, typer.Option("--language", help="Language (default: en).")
    ] = None,
    llm_url: Annotated[
        str | None, typer.Option("--llm-url", help="OpenAI-compatible LLM base URL (…/v1).")
    ] = None,
    llm_model: Annotated[str | None, typer.Option("--llm-model", help="LLM model name.")] = None,
    llm_api_key: Annotated[
        str | None,
        typer.Option(
            "--llm-api-key",
            envvar="DUPLEX_LLM_API_KEY",
            help="Key for --llm-url.",
            show_default=False,
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", envvar="DUPLEX_API_KEY", help="Orchestrator API key.", show_default=False
        ),
    ] = None,
    sample_rate: Annotated[
        int, typer.Option("--sample-rate", help="Mic link rate: 16000 or 48000 Hz.")
    ] = 16_000,
    stereo: Annotated[
        bool, typer.Option("--stereo", help="File mode: write user left, bot right.")
    ] = False,
    tail: Annotated[
        float,
        typer.Option(
            "--tail",
            help="File mode: seconds of quiet (nobody speaking, no reply due or playing) "
            "that end it once the file is sent.",
        ),
    ] = 2.0,
    max_wait: Annotated[
        float,
        typer.Option(
            "--max-wait",
            help="File mode: longest wait for the replies after the file ends (then it stops "
            "and says so).",
        ),
    ] = 60.0,
    duration: Annotated[
        float, typer.Option("--duration", help="Stop after this many seconds (0: Ctrl-C).")
    ] = 0.0,
) -> None:
    """Talk to the voice stack: microphone and speakers, typed text, or a WAV file.

    [bold]Examples[/bold]

      duplexctl talk                                    speak; Ctrl-C ends

      duplexctl talk --headphones                       no echo cancellation

      duplexctl talk --text                             type lines, hear the replies

      duplexctl talk --input q.wav --output a.wav --events ev.jsonl    from a file

      duplexctl talk --list-devices                     then --input 3 --output "USB"
    """
    try:
        if list_devices:
            _print_devices()
            return
        if sample_rate not in _LINK_RATES:
            raise InvalidArgument(f"--sample-rate {sample_rate}: use 16000 or 48000")
        hello = _hello(model, voice, language, llm_url, llm_model, llm_api_key, api_key)
        hello["aec"] = not headphones
        hello["codec"] = codec
        if input_ is not None and _is_wav(input_):
            _file_mode(
                url, Path(input_), output, events, hello,
                stereo=stereo, tail_s=tail, max_wait_s=max_wait,
            )  # fmt: skip
        else:
            if output is not None and _is_wav(output):
                raise InvalidArgument("--output FILE.wav needs --input FILE.wav (file mode)")
            hello["sample_rate"] = sample_rate
            run = Run(url, hello, events, duration)
            if text:
                run.typed(output)
            else:
                run.spoken(input_, output, aec=not headphones)
    except DuplexError as exc:
        fail(exc)


# -- --list-devices ------------------------------------------------------------------------


def _print_devices() -> None:
    from duplexctl.audio.devices import list_devices

    devices = list_devices()
    if not devices:
        raise NoAudioDevice(
            "no audio devices found",
            hint="connect a microphone/speakers; `--input q.wav --output a.wav` needs none",
        )
    rows = [
        [
            str(d.index) + (" *" if d.is_default_input or d.is_default_output else ""),
            d.name, d.hostapi, str(d.max_input_channels), str(d.max_output_channels),
            f"{d.default_samplerate:.0f}",
        ]
        for d in devices
    ]  # fmt: skip
    console.print(table("#", "DEVICE", "HOST API", "IN", "OUT", "RATE", rows=rows, no_wrap="#"))
    console.print("* = default.  Pick one with --input N / --output N (or a part of its name).")


# -- the hello -----------------------------------------------------------------------------


def _hello(
    model: str | None,
    voice: str | None,
    language: str | None,
    llm_url: str | None,
    llm_model: str | None,
    llm_api_key: str | None,
    api_key: str | None,
) -> dict[str, Any]:
    hello: dict[str, Any] = {"model": model, "voice": voice, "api_key": api_key}
    if language:
        hello["language"] = language
    if llm_url or llm_model:
        hello["llm"] = {"kind": "openai", "url": llm_url, "model": llm_model,
                        "api_key": llm_api_key}  # fmt: skip
    return {k: v for k, v in hello.items() if v is not None}


def _is_wav(value: str) -> bool:
    """A file, not a device: only by the suffix, so a device name never turns into a path."""
    return value.lower().endswith(".wav")


def _run_until_stopped(coro: Coroutine[Any, Any, T]) -> T | None:
    """`asyncio.run(coro)`, where Ctrl-C or SIGTERM cancel `coro` cleanly (then None).

    The coroutine's `finally` blocks close the sound devices and the socket; the caller's
    `with` blocks stop an embedded stack. Without this a SIGTERM would unwind from whatever
    line the loop was on, leaving asyncio to report half-cancelled tasks.
    """

    async def main() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        on_main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM)
        if on_main and task is not None:
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await coro
        finally:
            if on_main:  # put back the embedded stack's handler (asyncio would reset it)
                loop.remove_signal_handler(signal.SIGTERM)
                signal.signal(signal.SIGTERM, previous)

    try:
        return asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        return None


def _announce_embedded() -> None:
    err_console.print(
        "no stack from `duplexctl up` and nothing on 127.0.0.1:8080: starting the embedded "
        "default …"
    )


# -- file mode -----------------------------------------------------------------------------


def _file_mode(
    url: str | None,
    wav_in: Path,
    output: str | None,
    events: Path | None,
    hello: dict[str, Any],
    *,
    stereo: bool,
    tail_s: float,
    max_wait_s: float,
) -> None:
    from duplexctl.audio.status import StatusView
    from duplexctl.audio.wavfile import read_wav, to_link_rate, write_wav
    from duplexctl.client.embedded import orchestrator_for
    from duplexctl.client.ws import run_file_conversation, write_events

    wav_out = Path(output) if output is not None else None
    for path in (wav_out, events):
        if path is not None and not path.parent.is_dir():
            raise InvalidArgument(f"{path}: directory {path.parent} does not exist")
    samples, rate = read_wav(wav_in)
    mic = to_link_rate(samples, rate)
    view = StatusView()

    def on_event(ev: dict[str, Any]) -> None:
        for line in view.on_event(ev):
            console.print(line)

    hello = {**hello, "sample_rate": 16_000}  # run_file_conversation sends 16 kHz frames
    with orchestrator_for(url, on_start=_announce_embedded) as addr:
        conv = _run_until_stopped(
            run_file_conversation(
                addr, mic, hello=hello, tail_ms=round(tail_s * 1000),
                max_wait_ms=round(max_wait_s * 1000), on_event=on_event,
            )
        )  # fmt: skip
    if conv is None:
        fail("interrupted: nothing written", code=130)
    if conv.capped:
        if view.reply:  # the reply outlived --max-wait: show what was sent of it so far
            console.print(Text.assemble(("bot  › ", "bold cyan"), view.reply, (" …", "dim")))
        err_console.print(
            f"stopped {max_wait_s:g} s after the input ended (--max-wait) with a reply still "
            "going or due: the output ends there",
            style="yellow",
        )
    if wav_out is not None:
        write_wav(wav_out, conv.speaker, conv.mic if stereo else None)
    if events is not None:
        write_events(events, conv.events)
    console.print(
        f"{len(mic) / 16_000:.1f} s of input, {len(conv.speaker) / 48_000:.1f} s written, "
        f"{conv.frames_received * 0.02:.1f} s of reply audio, {conv.underruns} underruns"
    )
    if conv.lost is not None:  # what was received is written above; then say what happened
        kept = [str(p) for p in (wav_out, events) if p is not None]
        fail(DaemonUnavailable(
            f"the orchestrator went away mid-conversation ({conv.lost})",
            hint=(f"what was received is in {', '.join(kept)}; " if kept else "")
            + "`duplexctl status` / `duplexctl logs orchestrator` say why",
        ))  # fmt: skip


# -- live modes ----------------------------------------------------------------------------


@dataclass
class Run:
    """A live conversation's settings, shared by the spoken and the typed mode."""

    url: str | None
    hello: dict[str, Any]
    events: Path | None
    duration_s: float

    def typed(self, output: str | None) -> None:
        """Lines from stdin; replies play on the output device, or are only printed."""
        speaker = self._speaker_or_none(output)
        self._talk(speaker, None)

    def spoken(self, input_: str | None, output: str | None, *, aec: bool) -> None:
        from duplexctl.audio.aec import EchoCanceller
        from duplexctl.audio.devices import resolve_device
        from duplexctl.audio.streams import Microphone, Speaker

        mic_dev = resolve_device(input_, "input")
        out_dev = resolve_device(output, "output")
        err_console.print(f"mic {_device_label(mic_dev)} · speaker {_device_label(out_dev)}"
                          + ("" if aec else " · no echo cancellation"))  # fmt: skip
        canceller = EchoCanceller() if aec else None
        self._talk(
            Speaker(out_dev, aec=canceller),
            Microphone(mic_dev, link_rate=self.hello["sample_rate"], aec=canceller),
        )

    def _speaker_or_none(self, output: str | None) -> Speaker | None:
        from duplexctl.audio.devices import resolve_device
        from duplexctl.audio.streams import Speaker

        try:
            return Speaker(resolve_device(output, "output"))
        except NoAudioDevice as exc:
            if output is not None:  # a device asked for by name must exist
                raise
            err_console.print(f"{exc.message}: printing the replies only")
            return None

    def _talk(self, speaker: Speaker | None, mic: Microphone | None) -> None:
        from duplexctl.audio.status import StatusView
        from duplexctl.client.embedded import orchestrator_for

        view = StatusView()
        with orchestrator_for(self.url, on_start=_announce_embedded) as addr:
            # Ctrl-C (or SIGTERM) is how a spoken conversation ends: not an error
            _run_until_stopped(self._session(addr, view, speaker, mic))
        if speaker is not None:
            console.print(
                f"played {speaker.played_s:.1f} s of audio, {speaker.underruns} underruns"
                + (f", {speaker.xruns} device underflows" if speaker.xruns else "")
            )
            if speaker.aec is not None and speaker.aec.error is not None:
                err_console.print(f"warning: echo cancellation failed: {speaker.aec.error}")

    async def _session(
        self, addr: str, view: StatusView, speaker: Speaker | None, mic: Microphone | None
    ) -> None:
        from duplexctl.audio.streams import AudioIO
        from duplexctl.client.ws import VoiceClient

        async with VoiceClient(addr, self.hello) as client:
            io = AudioIO(speaker, mic)
            io.start()
            try:
                await self._converse(client, view, speaker, mic)
            finally:
                io.close()

    async def _converse(
        self,
        client: VoiceClient,
        view: StatusView,
        speaker: Speaker | None,
        mic: Microphone | None,
    ) -> None:
        from duplexctl.audio.live import LiveTalk
        from duplexctl.client.ws import write_events

        live = Live(view, console=console, refresh_per_second=10, transient=True)
        use_live = mic is not None and console.is_terminal
        printer = live.console.print if use_live else console.print

        def show(line: Text) -> None:
            printer(line)

        talk = LiveTalk(
            client, view, printer=show, speaker=speaker, mic=mic,
            text_input=sys.stdin if mic is None else None,
        )  # fmt: skip
        try:
            if use_live:
                live.start()
            await talk.run(self.duration_s or None)
            if speaker is not None:
                await speaker.drain(timeout_s=10.0)
        finally:
            if use_live:
                live.stop()
            if self.events is not None:
                write_events(self.events, talk.events)


def _device_label(device: Device) -> str:
    return f"#{device.index} {device.name} ({device.hostapi})"
