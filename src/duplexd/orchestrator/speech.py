"""Who holds the floor: the bot's reply and the barge-in state machine, with its one timer.

After LiveKit's `SpeechHandle`: the session hands each reply to `Speech.begin`, and then

- `interrupt(now, speech_start)` — a VAD onset while the bot is audible. In the caller's own
  event-loop turn: the reply is muted (no frame reaches the client after this), the client's
  queued audio is flushed, PAUSE goes to the worker, and the false-interruption timer starts.
- `confirm()` — words (or speech still going on when the timer fires) make it real: STOP.
- `resume()` — nothing came of it (a cough, echo): RESUME, the reply goes on.
- `stop()` — end the reply now (typed text over it, the user spoke before any audio); hard:
  it never waits more than `reply.STOP_DEADLINE_S` for a stuck worker.

States: LISTENING → SPEAKING (first reply audio) → BARGED_IN (interrupt) → SPEAKING (resume)
or LISTENING (confirm / stop / reply ended).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from duplexd.errors import DuplexError
from duplexd.logging import get_logger
from duplexd.orchestrator.deps import Clock
from duplexd.orchestrator.protocol import event
from duplexd.orchestrator.reply import Reply
from duplexd.orchestrator.telemetry import OrchTelemetry
from duplexd.orchestrator.transport import Outbox
from duplexd.orchestrator.turn import BargeIn, State

__all__ = ["WIRE_SETTLE_S", "Speech"]

log = get_logger("duplexd.orchestrator.speech")

WIRE_SETTLE_S = 0.06
"""After a PAUSE is acknowledged, frames already on the wire arrive within this; the barge-in
figures (frames after pause, worker silent) are read after it."""

Spawn = Callable[[Coroutine[Any, Any, None]], object]


class Speech:
    def __init__(
        self,
        *,
        session_id: str,
        outbox: Outbox,
        telemetry: OrchTelemetry,
        clock: Clock,
        false_interruption_ms: int,
        user_speaking: Callable[[], bool],
        on_resumed: Callable[[], None],
        on_state: Callable[[State], None],
        spawn: Spawn,
    ) -> None:
        self.session_id, self.out, self.telemetry, self.clock = session_id, outbox, telemetry, clock
        self.false_interruption_s = false_interruption_ms / 1000
        self.user_speaking, self.on_resumed = user_speaking, on_resumed
        self.on_state, self.spawn = on_state, spawn
        self.state = State.LISTENING
        self.reply: Reply | None = None
        self.barge: BargeIn | None = None
        self._timer: asyncio.Task[None] | None = None

    # -- queries ---------------------------------------------------------------------------

    @property
    def replying(self) -> bool:
        return self.reply is not None and not self.reply.done

    @property
    def audible(self) -> bool:
        """The user can hear the bot now: an onset would be a barge-in."""
        return self.replying and self.state != State.BARGED_IN and self.reply_audible

    @property
    def reply_audible(self) -> bool:
        return self.reply is not None and self.reply.audible

    def now_state(self) -> State:
        """The state after an await (mypy keeps narrowing attributes across awaits)."""
        return self.state

    # -- the reply's life ------------------------------------------------------------------

    def begin(self, reply: Reply) -> None:
        self.reply = reply
        reply.start()

    def adopt(self, reply: Reply) -> None:
        """A speculative reply, already running, becomes the one the user hears."""
        self.reply = reply

    def first_audio(self) -> None:
        if self.state != State.BARGED_IN:
            self._set(State.SPEAKING)

    def ended(self, reply: Reply) -> bool:
        """The reply finished; True when it was cut short by the user."""
        interrupted = reply.muted and self.state != State.SPEAKING
        if self.reply is reply and self.state == State.SPEAKING:
            self._set(State.LISTENING)
        return interrupted

    def listening(self) -> None:
        self._set(State.LISTENING)

    # -- barge-in --------------------------------------------------------------------------

    def interrupt(self, now: float, speech_start: float) -> BargeIn:
        """Mute, flush and PAUSE in this loop turn; the timer decides between confirm/resume."""
        reply = self.reply
        assert reply is not None
        pause = reply.mute()  # PAUSE goes out with this loop turn; no more frames to the client
        flushed = self.out.flush_audio()
        self.out.event(event("flush", turn=reply.turn))
        self._set(State.BARGED_IN)
        barge = self.barge = BargeIn(reply.turn, speech_start, now, flushed_frames=flushed)
        self.telemetry.c_bargein.inc()
        self.spawn(self._measure(barge, reply, pause))
        self._cancel_timer()
        self._timer = asyncio.create_task(self._false_interruption_timer(barge), name="barge-in")
        return barge

    async def confirm(self) -> None:
        """The interruption is real: STOP the worker; the user has the floor."""
        if self.state != State.BARGED_IN or self.reply is None:
            return
        self._cancel_timer()
        if self.barge is not None:
            self.barge.outcome = "interrupted"
        self._set(State.LISTENING)
        self.out.event(event("interrupted", turn=self.reply.turn))
        await self.reply.stop()

    async def resume(self) -> None:
        """A false interruption: the reply goes on where it paused."""
        if self.state != State.BARGED_IN or self.reply is None:
            return
        self._cancel_timer()
        if self.barge is not None:
            self.barge.outcome = "resumed"
        self.telemetry.c_false_interruptions.inc()
        self.on_resumed()
        self._set(State.SPEAKING)
        self.out.event(event("resume", turn=self.reply.turn))
        try:
            await self.reply.resume()
        except DuplexError as exc:
            log.warning("resume failed", session_id=self.session_id, error=str(exc))

    async def stop(self, *, flush: bool = False) -> None:
        """End the current reply now (hard: bounded wait for the worker's STOP)."""
        self._cancel_timer()
        reply = self.reply
        if reply is not None:
            if flush:
                self.out.flush_audio()
                self.out.event(event("flush", turn=reply.turn))
            await reply.stop()
        self._set(State.LISTENING)

    async def aclose(self) -> None:
        self._cancel_timer()
        if self.reply is not None:
            await self.reply.cancel()

    # -- internals -------------------------------------------------------------------------

    async def _false_interruption_timer(self, barge: BargeIn) -> None:
        await asyncio.sleep(self.false_interruption_s)
        self._timer = None  # running out: confirm/resume must not cancel this very task
        if self.barge is not barge or self.state != State.BARGED_IN:
            return
        if self.user_speaking():  # still talking: a real interruption even before words decode
            await self.confirm()
        else:
            await self.resume()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and not timer.done() and timer is not asyncio.current_task():
            timer.cancel()

    async def _measure(self, barge: BargeIn, reply: Reply, pause: asyncio.Task[Any]) -> None:
        try:
            ack = await pause
            barge.pause_ack = self.clock()
        except DuplexError as exc:
            log.warning("pause failed", session_id=self.session_id, error=str(exc))
            ack = None
        await asyncio.sleep(WIRE_SETTLE_S)
        barge.frames_after_pause = reply.frames_after_mute
        barge.worker_last_frame = reply.last_frame_after_mute
        figures = barge.figures()
        figures["worker_last_seq"] = ack.last_seq if ack is not None else None
        self.telemetry.observe_barge_in(figures)
        self.out.event(event("bargein", **figures))

    def _set(self, state: State) -> None:
        if state != self.state:
            self.state = state
            self.on_state(state)
