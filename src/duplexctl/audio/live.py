"""A live conversation: the microphone (or typed lines) in, the speaker out, one WebSocket.

`LiveTalk.run` owns every task it starts: the receiver (events and audio from the server),
the microphone sender or the typed-line loop, the silent-microphone watchdog and an optional
time limit. The first of them to finish ends the conversation and the rest are cancelled;
an error in any of them propagates to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from typing import IO, Any

import aiohttp
from rich.text import Text

from duplexctl.audio.status import StatusView
from duplexctl.audio.streams import Microphone, Speaker
from duplexctl.client.heard import HeardText
from duplexctl.client.ws import VoiceClient
from duplexctl.client.ws import _error_of as error_of_event  # the protocol's error mapping
from duplexd.errors import DaemonUnavailable
from duplexd.orchestrator.protocol import FLAG_LAST

__all__ = ["SILENT_AFTER_S", "SILENT_MIC_MESSAGE", "LiveTalk"]

SILENT_AFTER_S = 5.0
SILENT_MIC_MESSAGE = (
    "the microphone seems silent: check the input device (`duplexctl talk --list-devices`) "
    "and permissions"
)
DEAD_MIC_MESSAGE = (
    "the microphone delivers no audio: check the input device (`duplexctl talk --list-devices`) "
    "and permissions"
)
_TURN_TIMEOUT_S = 120.0

Printer = Callable[[Text], None]


class LiveTalk:
    def __init__(
        self,
        client: VoiceClient,
        view: StatusView,
        *,
        printer: Printer,
        speaker: Speaker | None = None,
        mic: Microphone | None = None,
        text_input: IO[str] | None = None,
    ) -> None:
        self.client = client
        self.view = view
        self.print = printer
        self.speaker = speaker
        self.mic = mic
        self.text_input = text_input
        self.events: list[dict[str, Any]] = []
        # what the speaker played of each reply; with no speaker, what was printed
        self.heard = HeardText(plays=speaker is not None)
        self._turn_done = asyncio.Event()
        self._t0 = time.perf_counter()

    async def run(self, duration_s: float | None = None) -> None:
        """Talk until the typed input ends, `duration_s` passes, or the task is cancelled."""
        self._t0 = time.perf_counter()
        self._on_event(self.client.ready)
        jobs: list[Coroutine[Any, Any, None]] = [self._receive()]
        if self.text_input is not None:
            jobs.append(self._type_lines(self.text_input))
        if self.mic is not None:
            jobs += [self._send_mic(self.mic), self._watch_mic(self.mic)]
        if duration_s:
            jobs.append(asyncio.sleep(duration_s))
        tasks = [asyncio.create_task(job) for job in jobs]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                try:
                    task.result()  # re-raise the first failure
                except (aiohttp.ClientError, ConnectionError) as exc:  # the orchestrator died
                    raise DaemonUnavailable(
                        f"the connection to the orchestrator broke: {type(exc).__name__} {exc}",
                        hint="`duplexctl status` / `duplexctl logs orchestrator` say why",
                    ) from None
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError, OSError):
                    await task

    # -- from the server -------------------------------------------------------------------

    async def _receive(self) -> None:
        async for item in self.client.messages():
            if item.audio is not None:
                _, turn, flags, pcm = item.audio
                clause = self.heard.frame(turn, flags)
                if self.speaker is not None:
                    self.speaker.push(pcm, last=bool(flags & FLAG_LAST), clause=clause)
            elif item.event is not None:
                self._on_event(item.event)
        raise DaemonUnavailable("the orchestrator closed the connection")

    def _on_event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        if kind == "flush" and self.speaker is not None:
            self.speaker.flush()  # first: barge-in silence must not wait for the printing
        self.heard.on_event(ev)
        if kind == "turn":  # what the speaker played of the reply, cut where it was cut
            ev = {
                **ev,
                "heard": self.heard.text(ev["turn"], interrupted=bool(ev.get("interrupted"))),
            }
        self.events.append({**ev, "t_ms": round((time.perf_counter() - self._t0) * 1000, 1)})
        for line in self.view.on_event(ev):
            self.print(line)
        if kind in ("turn", "error"):
            self._turn_done.set()
        if kind == "error" and ev.get("fatal"):
            raise error_of_event(ev)

    # -- typed input -------------------------------------------------------------------------

    async def _type_lines(self, source: IO[str]) -> None:
        """One typed line = one user turn; wait for the reply (and its playout) before the next."""
        lines = _read_lines_in_thread(source)
        while (line := await lines.get()) is not None:
            text = line.strip()
            if not text:
                continue
            self._turn_done.clear()
            await self.client.send_json({"type": "text", "text": text})
            async with asyncio.timeout(_TURN_TIMEOUT_S):
                await self._turn_done.wait()
            if self.speaker is not None:
                await self.speaker.drain()

    # -- the microphone ----------------------------------------------------------------------

    async def _send_mic(self, mic: Microphone) -> None:
        async for frame in mic.frames():
            self.view.mic_dbfs = mic.level.last_dbfs
            await self.client.send_audio(frame)

    async def _watch_mic(self, mic: Microphone) -> None:
        """Say so once when the mic gives nothing, or only digital silence, for 5 s."""
        await asyncio.sleep(SILENT_AFTER_S)
        # the level is counted on the PortAudio thread: poll it
        while mic.level.seconds < SILENT_AFTER_S and mic.level.blocks > 0:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        if mic.level.blocks == 0:
            self.print(self.view.warn(DEAD_MIC_MESSAGE))
        elif mic.level.loud_blocks == 0:
            self.print(self.view.warn(SILENT_MIC_MESSAGE))
        await asyncio.Event().wait()  # a watchdog never ends the conversation


def _read_lines_in_thread(source: IO[str]) -> asyncio.Queue[str | None]:
    """Lines of `source` as they are typed; None at end of input.

    A daemon thread rather than `asyncio.to_thread`: a blocked read must not keep the
    process alive on Ctrl-C (the default executor is joined at shutdown).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def put(item: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed while we were reading
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def read() -> None:
        try:
            for line in source:
                put(line)
        except (OSError, ValueError):
            pass
        put(None)

    threading.Thread(target=read, name="talk-stdin", daemon=True).start()
    return queue
