"""`duplexctl demo`: the README's first command.

With no audio hardware and nothing configured, it starts the embedded default (a worker and an
orchestrator), holds a short scripted conversation whose user side is synthesized speech in
another voice, including one barge-in, writes `demo.wav` (user left, bot right) and prints
the per-turn latency table and the barge-in figures.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from duplexctl.cli._common import fail

__all__ = ["demo"]


def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="stereo WAV: you left, bot right")
    ] = Path("demo.wav"),
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="use this orchestrator, HOST:PORT or daemon name (default: the one "
            "`duplexctl up` started, else 127.0.0.1:8080, else a private one)",
        ),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also write the turns and figures as JSON")
    ] = None,
) -> None:
    """Hold a spoken conversation with a barge-in, write demo.wav and print the latencies.

    Needs no microphone, speakers, Redis or GPU: the user is espeak-ng, the bot is the Piper
    voice on a local worker, and both sides are recorded on one timeline.
    """
    from rich.console import Console

    from duplexd.errors import DuplexError

    console = Console()
    try:
        summary = asyncio.run(_run(console, url, out))
    except DuplexError as exc:
        fail(exc)
    except TimeoutError:
        fail("the conversation stalled (no reply within 45 s); see the daemons' logs")
    if json_out is not None:
        json_out.write_text(json.dumps(summary, indent=2))
    if len(summary["turns"]) < 4 or not summary["bargeins"]:
        fail("the conversation did not complete (fewer than 4 turns or no barge-in)")


async def _run(console: Any, url: str | None, out: Path) -> dict[str, Any]:
    from duplexctl.client.ws import LiveConversation, VoiceClient
    from duplexctl.demo.printer import EventPrinter
    from duplexctl.demo.report import print_report, summarize
    from duplexctl.demo.script import demo_script

    async with _orchestrator(console, url) as addr:
        console.print(
            f"[dim]orchestrator {addr} · you are espeak-ng (en-us) · bot is Piper joe[/]\n"
        )
        printer = EventPrinter(console)
        async with VoiceClient(addr, {}) as client:
            conv = await LiveConversation(client, printer, on_heard=printer.heard).run(demo_script)
    _write_stereo(out, conv.mic, conv.speaker)
    summary = summarize(conv)
    console.print()
    print_report(console, summary)
    console.print(
        f"\nwrote [bold]{out}[/] ({len(conv.speaker) / 48000:.1f} s, you left, bot right)"
    )
    return summary


def _orchestrator(console: Any, url: str | None) -> Any:
    """`--url` (an address or a daemon name); else the stack `duplexctl up` started; else one
    on the default port; else a private one."""
    from contextlib import asynccontextmanager

    from duplexctl.client.embedded import embedded_stack, running_orchestrator

    @asynccontextmanager
    async def given(addr: str) -> Any:
        yield addr

    addr = running_orchestrator(url)
    if addr is not None:
        return given(addr)
    console.print("[dim]starting the embedded default: a TTS worker (Piper) and an orchestrator "
                  "(Silero VAD, Whisper tiny.en) …[/]")  # fmt: skip
    return embedded_stack()


def _write_stereo(path: Path, left: Any, right: Any) -> None:
    import wave

    import numpy as np

    n = min(len(left), len(right))
    stereo = np.stack([left[:n], right[:n]], axis=1).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(48_000)
        wav.writeframes(stereo.tobytes())
