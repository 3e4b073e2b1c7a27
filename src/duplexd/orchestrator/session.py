"""A conversation: mic audio in, VAD + ASR, turn-taking, replies out, barge-in.

Transport-agnostic: a transport calls `on_audio` / `on_text` / `on_llm` and drains the
session's `Outbox`. Everything runs on the event loop; ASR decodes run on the transcriber's
thread and synthesis on the worker, so `on_audio` stays cheap (VAD ≈ 0.1 ms per window).

A session is three parts behind injected dependencies (`SessionDeps`):
- `Listener` (listening.py): the mic path and the end of the user's turn;
- `Speech` (speech.py): the bot's reply and the barge-in state machine with its timer;
- `WorkerBinding` (binding.py): which worker speaks, fallback, upgrade and re-binding.
This module wires them: an onset while the bot is audible barges in (unless it is our own
echo), the end of a turn commits the transcript and starts a reply, and each reply's figures
go out as `latency` / `turn` events.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from duplexd.aio import TaskSet, cancel_and_wait
from duplexd.audio.frames import FRAME_MS
from duplexd.errors import DuplexError
from duplexd.logging import get_logger
from duplexd.orchestrator.binding import WorkerBinding, session_gone
from duplexd.orchestrator.deps import SessionDeps
from duplexd.orchestrator.echo import EchoGuard
from duplexd.orchestrator.listening import Listener
from duplexd.orchestrator.llm import Message, PushResponder, Responder, TeeResponder
from duplexd.orchestrator.protocol import Hello, error_code, event, pack_audio
from duplexd.orchestrator.reply import Reply, TtsBinding
from duplexd.orchestrator.speech import Speech
from duplexd.orchestrator.transport import Outbox
from duplexd.orchestrator.turn import State, TurnTimes

__all__ = ["Session", "SessionDeps"]

log = get_logger("duplexd.orchestrator.session")


class Session:
    def __init__(self, deps: SessionDeps, hello: Hello, outbox: Outbox) -> None:
        cfg = deps.config
        self.deps, self.cfg, self.hello, self.out = deps, cfg, hello, outbox
        self.clock = deps.clock
        self.id = uuid.uuid4().hex[:12]
        self.created = time.time()
        self.last_activity = time.monotonic()
        self.responder: Responder = deps.responder(hello)  # first: it may refuse the hello
        self.transcriber = deps.transcriber()
        self.listener = Listener(
            cfg, hello.sample_rate, deps.vad(), self.transcriber, deps.clock,
            on_vad=self._on_vad, on_onset=self._on_onset, on_end_of_turn=self._on_end_of_turn,
            on_pause=self._on_pause, on_resume=self._drop_speculation,
            on_not_done=self._drop_speculation, end_of_turn=deps.end_of_turn,
            telemetry=deps.telemetry, spawn=self._spawn,
        )  # fmt: skip
        self.speech = Speech(
            session_id=self.id, outbox=outbox, telemetry=deps.telemetry, clock=deps.clock,
            false_interruption_ms=cfg.turn.false_interruption_ms,
            user_speaking=lambda: self.listener.vad.speaking,
            on_resumed=self.listener.forget_utterance, on_state=self._emit_state,
            spawn=self._spawn,
        )  # fmt: skip
        self.binding = WorkerBinding(
            deps.registry, deps.policy.mode(cfg.routing.policy), hello, self.id, self._spawn
        )
        self.recorder = deps.recorder(self.id, hello.sample_rate) if deps.recorder else None
        self.history: list[Message] = []
        self.turn = 0
        self.transcript_tail = ""
        self._out_seq = 0
        self._times = TurnTimes()
        self.echo = EchoGuard(
            enabled=cfg.turn.echo_guard and not hello.aec, margin_db=cfg.turn.echo_guard_db
        )
        self._tasks = TaskSet(
            log=log.bind(session_id=self.id), failure_event="session task failed",
            on_error=self._task_failed,
        )  # fmt: skip
        self._last_run: asyncio.Task[Any] | None = None  # the latest _run_reply
        self._spec: Reply | None = None  # a speculative reply, its audio held back
        self._spec_text = ""
        self._spec_gen = 0  # bumped whenever a speculation in the making becomes stale
        self._discarded = 0  # speculative replies dropped in the current user turn
        self._partials_task: asyncio.Task[Any] | None = None
        self._closing = False

    # -- views ----------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.speech.state

    @property
    def reply(self) -> Reply | None:
        return self.speech.reply

    @property
    def tts(self) -> TtsBinding | None:
        return self.binding.current

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        tts = await self.binding.bind(self.hello.model)
        self._partials_task = asyncio.create_task(self._forward_partials(), name="partials")
        self._spawn(self.binding.keepalive(self.cfg.sessions.worker_keepalive_s))
        self.out.event(event(
            "ready", session_id=self.id, version=1, sample_rate=48_000, frame_ms=FRAME_MS,
            input_sample_rate=self.hello.sample_rate, model=tts.model_id,
            worker=tts.worker, llm=self.responder.name,
        ))  # fmt: skip
        self._emit_state(self.state)
        log.info("session started", session_id=self.id, model=tts.model_id)

    async def aclose(self) -> None:
        self._closing = True  # no new reply starts from here on
        self._drop_speculation(count=False)
        await self.speech.aclose()
        await self._tasks.cancel_all()
        await cancel_and_wait(self._partials_task)
        await self.transcriber.aclose()
        await self.responder.aclose()
        if self.recorder is not None:
            self.recorder.close()
        await self.binding.release()
        log.info("session ended", session_id=self.id, turns=self.turn)

    def summary(self) -> dict[str, Any]:
        tts = self.tts
        return {
            "session_id": self.id, "state": self.state.value, "turn": self.turn,
            "model": tts.model_id if tts else None, "worker": tts.worker if tts else None,
            "transcript_tail": self.transcript_tail[-120:], "created": self.created,
        }  # fmt: skip

    # -- inputs from the transport -----------------------------------------------------------

    def on_audio(self, pcm: bytes) -> None:
        """One 20 ms mic frame (already size-checked by the transport)."""
        self.last_activity = time.monotonic()
        if self.recorder is not None:
            self.recorder.user(pcm)
        self.listener.feed(pcm)

    def on_text(self, text: str) -> None:
        """Typed input: a user turn without audio."""
        self.last_activity = time.monotonic()
        self._drop_speculation()
        if self.speech.replying:
            self._spawn(self._interrupt_for_text(text))
            return
        self._times = self._typed_times()
        self._user_turn_text(text)

    def on_llm(self, text: str, final: bool) -> None:
        """Push mode: an external LLM host streams reply text into the session."""
        if not isinstance(self.responder, PushResponder):
            msg = "llm messages need `llm: {kind: push}` in the hello"
            self.out.event(event("error", code="not_push_mode", fatal=False, message=msg))
            return
        try:
            self.responder.push(text, final)
        except DuplexError as exc:  # too far ahead of the speech: refused, said so
            self.out.event(event("error", code=error_code(exc), message=str(exc), fatal=False))
            return
        self._pump_push()

    def _pump_push(self) -> None:
        """Push mode: one reply at a time reads the pushed text; when text waits and no reply
        is running (or about to), start one. A reply that ends re-checks (`_run_reply`), so
        text pushed while one finishes is never left unread."""
        if (self._closing or not isinstance(self.responder, PushResponder)
                or not self.responder.pending):  # fmt: skip
            return
        if self._last_run is not None and not self._last_run.done():
            return
        if not self._times.speech_end:
            self._times = self._typed_times()
        self._start_reply()

    # -- the listener's reports ----------------------------------------------------------------

    def _on_vad(self, kind: str, t_ms: int) -> None:
        self.out.event(event("vad", event=kind, t_ms=t_ms))

    def _on_onset(self, speech_start_ms: int, now: float, mic_db: float) -> bool:
        speech = self.speech
        if speech.replying and speech.state != State.BARGED_IN:
            if speech.reply_audible:
                if self.echo.is_echo(mic_db):
                    return False
                speech.interrupt(now, self.listener.speech_start(now, speech_start_ms))
            else:  # the user speaks again before any reply audio: they were not done
                self._spawn(speech.stop())
        return True

    def _on_end_of_turn(self, times: TurnTimes) -> None:
        self._times = times
        self._spawn(self._end_user_turn())

    async def _end_user_turn(self) -> None:
        try:
            transcript = await self.listener.commit()
        except RuntimeError:
            return  # reset by a new utterance meanwhile
        self._times.transcript = self.clock()
        self._times.asr_decode_ms = round(transcript.decode_ms, 1)
        self.deps.telemetry.h_asr.observe(transcript.decode_ms)
        text = transcript.text.strip()
        if text:
            self.out.event(event("transcript", final=True, text=text, turn=self.turn + 1))
            self.transcript_tail = (self.transcript_tail + " " + text).strip()
        spec = self._spec
        if spec is not None and (text != self._spec_text or spec.error is not None
                                 or self.speech.state != State.LISTENING):  # fmt: skip
            self._drop_speculation()
            spec = None
        self._times.discarded, self._discarded = self._discarded, 0
        if self.speech.state == State.BARGED_IN:
            real = _words(text) >= self.cfg.turn.min_barge_in_words
            await (self.speech.confirm() if real else self.speech.resume())
            if not text or self.speech.now_state() != State.LISTENING:
                return
        if text:
            self._user_turn_text(text, from_asr=True, speculative=spec)
        elif spec is not None:
            self._drop_speculation()

    async def _forward_partials(self) -> None:
        while True:
            partial = await self.transcriber.partials.get()
            text = partial.text.strip()
            if not text or not self.listener.user_speaking:
                continue
            self.out.event(event("transcript", final=False, text=text, turn=self.turn + 1))
            if (self.speech.state == State.BARGED_IN
                    and _words(text) >= self.cfg.turn.min_barge_in_words):  # fmt: skip
                await self.speech.confirm()

    # -- replies -------------------------------------------------------------------------------

    def _typed_times(self) -> TurnTimes:
        now = self.clock()
        return TurnTimes(speech_end=now, endpoint=now, transcript=now)

    def _user_turn_text(
        self, text: str, *, from_asr: bool = False, speculative: Reply | None = None
    ) -> None:
        if not from_asr:
            self.out.event(event("transcript", final=True, text=text, turn=self.turn + 1))
        question = Message("user", text)
        self.history.append(question)
        if isinstance(self.responder, PushResponder):
            return  # the external host answers by pushing `llm` text
        if speculative is not None:  # its text and audio are (being) made: let it be heard
            self._spec, self._spec_gen = None, self._spec_gen + 1
            self._times.speculative = True
            self.deps.telemetry.c_spec.labels("used").inc()
        self._start_reply(speculative, question)

    def _start_reply(self, ready: Reply | None = None, question: Message | None = None) -> None:
        self._last_run = self._spawn(self._run_reply(self._last_run, ready, question))

    def _history_through(self, question: Message | None) -> list[Message]:
        """The conversation up to and including `question` (the user turn a reply answers):
        a later question, typed before this reply began, is not what it answers."""
        if question is not None:
            for i, message in enumerate(self.history):
                if message is question:
                    return self.history[: i + 1]
        return list(self.history)

    def _new_reply(
        self, turn: int, tts: TtsBinding, history: list[Message],
        responder: TeeResponder | None = None,
    ) -> Reply:  # fmt: skip
        return Reply(
            turn=turn, tts=tts, responder=responder or TeeResponder(self.responder),
            history=history, on_audio=self._send_audio, on_unit=self._on_unit,
            on_first_audio=self._on_first_audio, clock=self.clock,
        )  # fmt: skip

    async def _run_reply(
        self, previous: asyncio.Task[Any] | None, ready: Reply | None, question: Message | None
    ) -> None:
        if previous is not None and not previous.done():
            # An interrupted reply finishes first, so what it said is in the history (in its
            # place, before the words that interrupted it) when this reply reads it.
            await asyncio.wait({previous})
        try:
            await self._reply_once(ready, question)
        finally:
            if self._last_run is asyncio.current_task():
                self._last_run = None
        self._pump_push()  # push text that arrived while this reply was finishing

    async def _reply_once(self, ready: Reply | None, question: Message | None) -> None:
        times = self._times
        if ready is not None:  # a speculative reply, started at the pause: release its audio
            self.turn += 1
            reply = ready
            reply.turn = self.turn
            times.speculation_started, times.speculation_ready = (
                reply.times.started,
                reply.times.ready,
            )
            self.speech.adopt(reply)
            reply.release()
        else:
            try:
                tts, rebound = await self.binding.ensure()
            except DuplexError as exc:  # its worker died earlier and no other one will do
                self.out.event(event("error", code="no_worker", message=str(exc), fatal=False))
                return
            if rebound:
                self.out.event(event("worker", worker=tts.worker, model=tts.model_id))
            self.turn += 1
            reply = self._new_reply(self.turn, tts, self._history_through(question))
            self.speech.begin(reply)
        await reply.wait()
        reply = await self._again_if_session_lost(reply)
        self._drop_interrupted_push(reply)
        times.first_text = reply.times.first_text
        times.first_audio = reply.times.first_audio
        await self._finish_reply(reply, times)

    async def _again_if_session_lost(self, reply: Reply) -> Reply:
        """The worker no longer had the session (it restarted, or ended it as idle) and the
        caller heard nothing yet: start a new worker session and say the same reply, once."""
        error = reply.error
        if (error is None or not session_gone(error) or reply.heard or reply.muted
                or reply.times.first_audio is not None or self._closing):  # fmt: skip
            return reply
        try:
            tts = await self.binding.lost(error)
        except DuplexError:
            return reply  # no worker will do: reported with the reply's error
        if tts is None:
            return reply
        log.info("worker lost the session: re-bound, reply sent again", session_id=self.id,
                 worker=tts.worker, error=str(error))  # fmt: skip
        if (tts.worker, tts.model_id) != (reply.tts.worker, reply.tts.model_id):
            self.out.event(event("worker", worker=tts.worker, model=tts.model_id))
        assert isinstance(reply.responder, TeeResponder)
        again = self._new_reply(reply.turn, tts, reply.history, reply.responder.again())
        self.speech.begin(again)
        await again.wait()
        return again

    def _drop_interrupted_push(self, reply: Reply) -> None:
        """Push mode: a reply stopped by the user (barge-in, typed text) drops the text already
        pushed for it, up to its `final`, rather than speaking it as the next reply."""
        responder = reply.responder
        if (reply.muted and isinstance(self.responder, PushResponder)
                and isinstance(responder, TeeResponder) and not responder.finished):  # fmt: skip
            self.responder.drop_until_final()

    async def _finish_reply(self, reply: Reply, times: TurnTimes) -> None:
        heard = " ".join(u.strip() for u in reply.heard if u.strip())
        if heard:  # right after the user turn it answered, even if the user spoke over it
            self.history.insert(len(reply.history), Message("assistant", heard))
        if reply.error is not None:
            await self._on_reply_error(reply.error)
        figures = times.figures()
        if figures["total_ms"] is not None:
            self.deps.telemetry.observe_turn(figures)
        interrupted = self.speech.ended(reply)
        self.out.event(event("reply", text=heard, turn=reply.turn, final=True))
        self.out.event(event("turn", turn=reply.turn, latency=figures, reply_text=heard,
                             interrupted=interrupted, model=reply.tts.model_id))  # fmt: skip

    def _on_first_audio(self) -> None:
        self.speech.first_audio()
        reply, times = self.reply, self._times
        if reply is not None:  # every stage is known now: report before the reply ends
            times.first_text, times.first_audio = reply.times.first_text, reply.times.first_audio
            self.out.event(event("latency", turn=reply.turn, **times.figures(), **times.extra()))

    # -- speculation ---------------------------------------------------------------------------

    def _on_pause(self) -> None:
        """The user paused: answer the speculative transcript now, audio held until the turn
        is confirmed (`_end_user_turn`) or dropped (they go on, or the model says not done)."""
        if (not self.cfg.turn.speculate or isinstance(self.responder, PushResponder)
                or self.speech.replying or self.speech.state != State.LISTENING
                or self._spec is not None):  # fmt: skip
            return
        self._spawn(self._speculate(self._spec_gen))

    async def _speculate(self, generation: int) -> None:
        try:
            transcript = await self.listener.speculative_transcript()
            tts, _ = await self.binding.ensure()
        except (RuntimeError, DuplexError):  # abandoned (they went on) or no worker now
            return
        text = transcript.text.strip()
        if not text or generation != self._spec_gen or self._spec is not None:
            return
        if not self.listener.user_speaking:
            return  # the turn already ended: the ordinary path answers it
        history = [*self.history, Message("user", text)]
        reply = self._new_reply(self.turn + 1, tts, history)
        reply.holding = True
        self._spec, self._spec_text = reply, text
        self.deps.telemetry.c_spec.labels("started").inc()
        reply.start()

    def _drop_speculation(self, *, count: bool = True) -> None:
        """The user went on (or typed, or the model said not done): the held reply goes."""
        self._spec_gen += 1
        spec, self._spec = self._spec, None
        if spec is None:
            return
        if count:
            self._discarded += 1
            self.deps.telemetry.c_spec.labels("discarded").inc()
        self._spawn(spec.stop())

    def _on_unit(self, text: str) -> None:
        turn = self.reply.turn if self.reply else self.turn
        self.out.event(event("reply", text=text, turn=turn, final=False))

    def _send_audio(self, pcm: bytes, last: bool, level: float) -> None:
        self.echo.played(level)
        if self.recorder is not None:
            self.recorder.bot(pcm)
        self.out.audio(pack_audio(self._out_seq, self.turn, pcm, last=last))
        self._out_seq += 1

    async def _interrupt_for_text(self, text: str) -> None:
        await self.speech.stop(flush=True)
        self._times = self._typed_times()
        self._user_turn_text(text)

    async def _on_reply_error(self, error: DuplexError) -> None:
        self.out.event(event("error", code=error_code(error), message=str(error), fatal=False))
        before = self.binding.current
        try:
            bound = await self.binding.lost(error)
        except DuplexError as exc:
            self.out.event(event("error", code="no_worker", message=str(exc), fatal=False))
        else:
            moved = before is None or (bound is not None and (bound.worker, bound.model_id)
                                       != (before.worker, before.model_id))  # fmt: skip
            if bound is not None and moved:
                self.out.event(event("worker", worker=bound.worker, model=bound.model_id))
        self.speech.listening()

    # -- helpers ---------------------------------------------------------------------------

    def _emit_state(self, state: State) -> None:
        self.out.event(event("state", state=state.value, t_ms=self.listener.stream_ms))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return self._tasks.spawn(coro)

    def _task_failed(self, task: asyncio.Task[Any], exc: BaseException) -> None:
        self.out.event(event("error", code="internal", message=str(exc), fatal=False))


def _words(text: str) -> int:
    return len([w for w in text.split() if any(c.isalnum() for c in w)])
