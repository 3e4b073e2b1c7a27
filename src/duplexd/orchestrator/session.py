"""A conversation: mic audio in, VAD + ASR, turn-taking, replies out, barge-in.

Transport-agnostic: a transport calls `on_audio` / `on_text` / `on_llm` and drains the
session's `Outbox`. Everything runs on the event loop; ASR decodes run on the transcriber's
thread and synthesis on the worker, so `on_audio` stays cheap (VAD ≈ 0.1 ms per window).

End of turn: at the first silent windows after speech the final decode starts speculatively
and the trailing silence is held back, so when `end_of_turn_silence_ms` has passed the
transcript is usually ready; if the user speaks again the speculation is dropped.

Barge-in: a VAD onset while the bot is audible, in the same loop turn: mute the reply (no
frame reaches the client after this), flush the client's queued audio, PAUSE the worker, stop
reading the LLM. Words within `false_interruption_ms` (or speech still going on then) make it
real: STOP and the user's new turn. Otherwise it was a cough or echo: RESUME.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from duplexd.asr import ASREngine, StreamingTranscriber
from duplexd.audio.frames import ASR_SAMPLE_RATE, FRAME_MS
from duplexd.audio.pcm import Int16Array, dbfs, rms
from duplexd.audio.resample import StreamResampler
from duplexd.config import OrchestratorConfig
from duplexd.errors import DaemonUnavailable, DuplexError
from duplexd.logging import get_logger
from duplexd.orchestrator.llm import Message, PushResponder, Responder, create_responder
from duplexd.orchestrator.protocol import Hello, event, pack_audio
from duplexd.orchestrator.recorder import Recorder
from duplexd.orchestrator.registry import StaticRegistry
from duplexd.orchestrator.reply import Reply, TtsBinding
from duplexd.orchestrator.routing import RoutingPolicy, choose
from duplexd.orchestrator.telemetry import OrchTelemetry
from duplexd.orchestrator.transport import Outbox
from duplexd.orchestrator.turn import BargeIn, State, TurnTimes
from duplexd.vad import VADParams, create_vad

__all__ = ["Session", "SessionDeps"]

log = get_logger("duplexd.orchestrator.session")

_SPECULATE_AFTER_MS = 64  # two Silero windows of silence: start the final decode
_PREROLL_MS = 600  # audio kept before a VAD onset (onset is detected after speech starts)
_ECHO_LOSS_DB = 20.0  # assumed speaker -> mic attenuation for the echo guard
_ECHO_WINDOW_MS = 500  # output that may still be echoing back into the mic


@dataclass
class SessionDeps:
    config: OrchestratorConfig
    asr: ASREngine
    registry: StaticRegistry
    policy: RoutingPolicy
    telemetry: OrchTelemetry


class Session:
    def __init__(self, deps: SessionDeps, hello: Hello, outbox: Outbox) -> None:
        cfg = deps.config
        self.deps, self.cfg, self.hello, self.out = deps, cfg, hello, outbox
        self.id = uuid.uuid4().hex[:12]
        self.created = time.time()
        self.last_activity = time.monotonic()
        self.state = State.LISTENING
        self.vad = create_vad(cfg.vad.engine, VADParams(
            threshold=cfg.vad.threshold, min_speech_ms=cfg.vad.min_speech_ms,
            hangover_ms=cfg.vad.hangover_ms, aggressiveness=cfg.vad.aggressiveness,
        ))  # fmt: skip
        self.transcriber = StreamingTranscriber(
            deps.asr, partial_interval_ms=cfg.asr.partial_interval_ms
        )
        self._resampler = (
            StreamResampler(hello.sample_rate, ASR_SAMPLE_RATE)
            if hello.sample_rate != ASR_SAMPLE_RATE else None
        )  # fmt: skip
        llm = hello.llm
        self.responder: Responder = create_responder(
            llm.kind if llm else cfg.llm.kind,
            url=(llm.url if llm else None) or cfg.llm.url,
            model=(llm.model if llm else None) or cfg.llm.model,
            api_key=(llm.api_key if llm else None) or cfg.llm.api_key,
            system_prompt=cfg.llm.system_prompt,
            timeout_s=cfg.llm.timeout_s,
        )
        self.history: list[Message] = []
        self.turn = 0
        self.reply: Reply | None = None
        self.tts: TtsBinding | None = None
        self.transcript_tail = ""
        self._out_seq = 0
        self._stream_ms = 0
        self._preroll: collections.deque[Int16Array] = collections.deque(
            maxlen=_PREROLL_MS // FRAME_MS
        )
        self._user_speaking = False
        self._silence_since: float | None = None
        self._silence_ms = 0
        self._holding: list[Int16Array] | None = None  # silence held back after begin_final
        self._times = TurnTimes()
        self._barge: BargeIn | None = None
        self._out_levels: collections.deque[float] = collections.deque(
            maxlen=_ECHO_WINDOW_MS // FRAME_MS
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        record_dir = cfg.sessions.record_dir
        self.recorder = Recorder(record_dir, self.id, hello.sample_rate) if record_dir else None
        self._partials_task: asyncio.Task[Any] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self._bind_tts(self.hello.model)
        self._partials_task = asyncio.create_task(self._forward_partials(), name="partials")
        assert self.tts is not None
        self.out.event(event(
            "ready", session_id=self.id, version=1, sample_rate=48_000, frame_ms=FRAME_MS,
            input_sample_rate=self.hello.sample_rate, model=self.tts.model_id,
            worker=self.tts.worker, llm=self.responder.name,
        ))  # fmt: skip
        self._emit_state()
        log.info("session started", session_id=self.id, model=self.tts.model_id)

    async def aclose(self) -> None:
        if self.reply is not None:
            await self.reply.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._partials_task is not None:
            self._partials_task.cancel()
        pending = [*self._tasks] + ([self._partials_task] if self._partials_task else [])
        for task in pending:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.transcriber.aclose()
        await self.responder.aclose()
        if self.recorder is not None:
            self.recorder.close()
        if self.tts is not None:
            with contextlib.suppress(DuplexError):
                await self.tts.client.end_session(self.tts.session_id)
        log.info("session ended", session_id=self.id, turns=self.turn)

    def summary(self) -> dict[str, Any]:
        return {
            "session_id": self.id, "state": self.state.value, "turn": self.turn,
            "model": self.tts.model_id if self.tts else None,
            "worker": self.tts.worker if self.tts else None,
            "transcript_tail": self.transcript_tail[-120:], "created": self.created,
        }  # fmt: skip

    # -- inputs from the transport -----------------------------------------------------------

    def on_audio(self, pcm: bytes) -> None:
        """One 20 ms mic frame (already size-checked by the transport)."""
        now = time.perf_counter()
        self.last_activity = time.monotonic()
        if self.recorder is not None:
            self.recorder.user(pcm)
        x = np.frombuffer(pcm, dtype="<i2").astype(np.int16)
        if self._resampler is not None:
            x = self._resampler.process(x)
        self._stream_ms += FRAME_MS
        self._preroll.append(x)
        mic_db = dbfs(rms(x))
        for ev in self.vad.process(x):
            self._on_vad(ev.kind, ev.speech_start_ms, now, mic_db)
        if self._user_speaking:
            self._track_silence(x, now)

    def on_text(self, text: str) -> None:
        """Typed input: a user turn without audio."""
        self.last_activity = time.monotonic()
        if self.reply is not None and not self.reply.done:
            self._spawn(self._interrupt_for_text(text))
            return
        now = time.perf_counter()
        self._times = TurnTimes(speech_end=now, endpoint=now, transcript=now)
        self._user_turn_text(text)

    def on_llm(self, text: str, final: bool) -> None:
        """Push mode: an external LLM host streams reply text into the session."""
        if not isinstance(self.responder, PushResponder):
            msg = "llm messages need `llm: {kind: push}` in the hello"
            self.out.event(event("error", code="not_push_mode", fatal=False, message=msg))
            return
        self.responder.push(text, final)
        if self.reply is None or self.reply.done:
            if not self._times.speech_end:
                now = time.perf_counter()
                self._times = TurnTimes(speech_end=now, endpoint=now, transcript=now)
            self._start_reply()

    # -- VAD and end of turn -----------------------------------------------------------------

    def _on_vad(self, kind: str, speech_start_ms: int, now: float, mic_db: float) -> None:
        self.out.event(event("vad", event=kind, t_ms=self._stream_ms))
        if kind != "onset":
            return
        if self.reply is not None and not self.reply.done and self.state != State.BARGED_IN:
            if self.reply.audible:
                if self._is_echo(mic_db):
                    return
                speech_start = now - (self._stream_ms - speech_start_ms) / 1000
                self._barge_in(now, speech_start)
            else:  # the user speaks again before any reply audio: they were not done
                self._spawn(self._drop_silent_reply())
        if not self._user_speaking:
            self._begin_user_speech(speech_start_ms)

    def _is_echo(self, mic_db: float) -> bool:
        """Without client AEC, our own voice returns through the mic; don't let it barge in."""
        if self.hello.aec or not self.cfg.turn.echo_guard:
            return False
        # the echo at the mic may come from any frame sent in the last half second (lead,
        # client buffer, acoustic path): compare with the loudest of them
        loudest = max(self._out_levels, default=float("-inf"))
        expected_echo = loudest - _ECHO_LOSS_DB
        return mic_db < expected_echo + self.cfg.turn.echo_guard_db

    def _begin_user_speech(self, speech_start_ms: int) -> None:
        self._user_speaking = True
        self._silence_since, self._silence_ms, self._holding = None, 0, None
        self.transcriber.reset()
        back = max(self._stream_ms - speech_start_ms, FRAME_MS) // FRAME_MS + 2
        for chunk in list(self._preroll)[-back:]:
            self.transcriber.feed(chunk)

    def _track_silence(self, x: Int16Array, now: float) -> None:
        speech = self.vad.last_probability >= self.cfg.vad.threshold
        if speech:
            if self._holding is not None:  # spoke again: drop the speculative final
                self.transcriber.cancel()
                for chunk in self._holding:
                    self.transcriber.feed(chunk)
            self._silence_since, self._silence_ms, self._holding = None, 0, None
            self.transcriber.feed(x)
            return
        if self._silence_since is None:
            self._silence_since = now - FRAME_MS / 1000
        self._silence_ms += FRAME_MS
        if self._holding is not None:
            self._holding.append(x)
        else:
            self.transcriber.feed(x)
            if self._silence_ms >= _SPECULATE_AFTER_MS:
                self.transcriber.begin_final()
                self._holding = []
        if self._silence_ms >= self.cfg.turn.end_of_turn_silence_ms:
            self._user_speaking = False
            self._times = TurnTimes(speech_end=self._silence_since, endpoint=now)
            self._spawn(self._end_user_turn())

    async def _end_user_turn(self) -> None:
        try:
            transcript = await self.transcriber.commit()
        except RuntimeError:
            return  # reset by a new utterance meanwhile
        self._times.transcript = time.perf_counter()
        self._times.asr_decode_ms = round(transcript.decode_ms, 1)
        self.deps.telemetry.h_asr.observe(transcript.decode_ms)
        text = transcript.text.strip()
        if text:
            self.out.event(event("transcript", final=True, text=text, turn=self.turn + 1))
            self.transcript_tail = (self.transcript_tail + " " + text).strip()
        if self.state == State.BARGED_IN:
            await (self._confirm_barge_in() if _words(text) >= self.cfg.turn.min_barge_in_words
                   else self._resume_after_false_barge_in())  # fmt: skip
            if not text or self._state_now() != State.LISTENING:
                return
        if text:
            self._user_turn_text(text, from_asr=True)

    async def _forward_partials(self) -> None:
        while True:
            partial = await self.transcriber.partials.get()
            text = partial.text.strip()
            if not text or not self._user_speaking:
                continue
            self.out.event(event("transcript", final=False, text=text, turn=self.turn + 1))
            if self.state == State.BARGED_IN and _words(text) >= self.cfg.turn.min_barge_in_words:
                await self._confirm_barge_in()

    # -- replies -------------------------------------------------------------------------------

    def _user_turn_text(self, text: str, *, from_asr: bool = False) -> None:
        if not from_asr:
            self.out.event(event("transcript", final=True, text=text, turn=self.turn + 1))
        self.history.append(Message("user", text))
        if isinstance(self.responder, PushResponder):
            return  # the external host answers by pushing `llm` text
        self._start_reply()

    def _start_reply(self) -> None:
        self._spawn(self._run_reply())

    async def _run_reply(self) -> None:
        await self._maybe_upgrade_model()
        tts = self.tts
        if tts is None:  # its worker died earlier: find one now, or say why not
            try:
                tts = await self._bind_tts(self.hello.model)
            except DuplexError as exc:
                self.out.event(event("error", code="no_worker", message=str(exc), fatal=False))
                return
            self.out.event(event("worker", worker=tts.worker, model=tts.model_id))
        self.turn += 1
        times = self._times
        reply = Reply(
            turn=self.turn, tts=tts, responder=self.responder, history=list(self.history),
            on_audio=self._send_audio, on_unit=self._on_unit,
            on_first_audio=self._on_first_audio,
        )  # fmt: skip
        self.reply = reply
        reply.start()
        await reply.wait()
        times.first_text = reply.times.first_text
        times.first_audio = reply.times.first_audio
        await self._finish_reply(reply, times)

    async def _finish_reply(self, reply: Reply, times: TurnTimes) -> None:
        heard = " ".join(reply.heard).strip()
        if heard:
            self.history.append(Message("assistant", heard))
        if reply.error is not None:
            await self._on_reply_error(reply.error)
        figures = times.figures()
        if figures["total_ms"] is not None:
            self.deps.telemetry.observe_turn(figures)
        interrupted = reply.muted and self.state != State.SPEAKING
        self.out.event(event("reply", text=heard, turn=reply.turn, final=True))
        self.out.event(event("turn", turn=reply.turn, latency=figures, reply_text=heard,
                             interrupted=interrupted, model=reply.tts.model_id))  # fmt: skip
        if self.reply is reply and self.state == State.SPEAKING:
            self._set_state(State.LISTENING)

    def _on_first_audio(self) -> None:
        if self.state != State.BARGED_IN:
            self._set_state(State.SPEAKING)
        reply, times = self.reply, self._times
        if reply is not None:  # every stage is known now: report before the reply ends
            times.first_text, times.first_audio = reply.times.first_text, reply.times.first_audio
            self.out.event(event("latency", turn=reply.turn, **times.figures()))

    def _on_unit(self, text: str) -> None:
        turn = self.reply.turn if self.reply else self.turn
        self.out.event(event("reply", text=text, turn=turn, final=False))

    def _send_audio(self, pcm: bytes, last: bool, level: float) -> None:
        self._out_levels.append(dbfs(level))
        if self.recorder is not None:
            self.recorder.bot(pcm)
        self.out.audio(pack_audio(self._out_seq, self.turn, pcm, last=last))
        self._out_seq += 1

    async def _drop_silent_reply(self) -> None:
        if self.reply is not None:
            await self.reply.stop()
        self._set_state(State.LISTENING)

    async def _interrupt_for_text(self, text: str) -> None:
        if self.reply is not None:
            self.out.flush_audio()
            self.out.event(event("flush", turn=self.reply.turn))
            await self.reply.stop()
        self._set_state(State.LISTENING)
        now = time.perf_counter()
        self._times = TurnTimes(speech_end=now, endpoint=now, transcript=now)
        self._user_turn_text(text)

    # -- barge-in ---------------------------------------------------------------------------------

    def _barge_in(self, now: float, speech_start: float) -> None:
        reply = self.reply
        assert reply is not None
        pause = reply.mute()  # PAUSE goes out with this loop turn; no more frames to the client
        flushed = self.out.flush_audio()
        self.out.event(event("flush", turn=reply.turn))
        self._set_state(State.BARGED_IN)
        self._barge = BargeIn(reply.turn, speech_start, now, flushed_frames=flushed)
        self.deps.telemetry.c_bargein.inc()
        self._spawn(self._measure_barge_in(self._barge, reply, pause))
        self._spawn(self._false_interruption_timer(self._barge))

    async def _measure_barge_in(
        self, barge: BargeIn, reply: Reply, pause: asyncio.Task[Any]
    ) -> None:
        try:
            ack = await pause
            barge.pause_ack = time.perf_counter()
        except DuplexError as exc:
            log.warning("pause failed", session_id=self.id, error=str(exc))
            ack = None
        await asyncio.sleep(0.06)  # frames already on the wire arrive within this
        barge.frames_after_pause = reply.frames_after_mute
        barge.worker_last_frame = reply.last_frame_after_mute
        figures = barge.figures()
        figures["worker_last_seq"] = ack.last_seq if ack is not None else None
        self.deps.telemetry.observe_barge_in(figures)
        self.out.event(event("bargein", **figures))

    async def _false_interruption_timer(self, barge: BargeIn) -> None:
        await asyncio.sleep(self.cfg.turn.false_interruption_ms / 1000)
        if self._barge is not barge or self.state != State.BARGED_IN:
            return
        if self.vad.speaking:  # still talking: a real interruption even before words decode
            await self._confirm_barge_in()
        else:
            await self._resume_after_false_barge_in()

    async def _confirm_barge_in(self) -> None:
        if self.state != State.BARGED_IN or self.reply is None:
            return
        if self._barge is not None:
            self._barge.outcome = "interrupted"
        self._set_state(State.LISTENING)
        self.out.event(event("interrupted", turn=self.reply.turn))
        await self.reply.stop()

    async def _resume_after_false_barge_in(self) -> None:
        if self.state != State.BARGED_IN or self.reply is None:
            return
        if self._barge is not None:
            self._barge.outcome = "resumed"
        self.deps.telemetry.c_false_interruptions.inc()
        self._user_speaking, self._holding = False, None
        self.transcriber.reset()
        self._set_state(State.SPEAKING)
        self.out.event(event("resume", turn=self.reply.turn))
        try:
            await self.reply.resume()
        except DuplexError as exc:
            log.warning("resume failed", session_id=self.id, error=str(exc))

    # -- workers ---------------------------------------------------------------------------

    async def _bind_tts(self, model_id: str | None, exclude: set[str] | None = None) -> TtsBinding:
        registry, policy = self.deps.registry, self.deps.policy.mode(self.cfg.routing.policy)
        exclude = exclude or set()
        for _attempt in range(len(registry.workers) or 1):
            candidates = [w for w in registry.healthy() if w.name not in exclude]
            route = choose(candidates, policy, model_id=model_id, language=self.hello.language)
            if route.preload is not None:
                target, wanted = route.preload
                self._spawn(_preload(target.client, wanted))
            try:
                resp = await route.worker.client.start_session(
                    model_id=route.model_id, voice=self.hello.voice or "",
                    language=self.hello.language or "", session_id=f"{self.id}-{route.worker.name}",
                )  # fmt: skip
            except DaemonUnavailable as exc:
                registry.mark_unhealthy(route.worker.name, str(exc))
                exclude.add(route.worker.name)
                continue
            self.tts = TtsBinding(route.worker.name, route.worker.client, resp.session_id,
                                  resp.model_id, fallback=route.fallback)  # fmt: skip
            return self.tts
        raise DaemonUnavailable("no TTS worker accepted the session")

    async def _maybe_upgrade_model(self) -> None:
        """A fallback served earlier turns; switch once the requested model is resident."""
        if self.tts is None or not self.tts.fallback or not self.hello.model:
            return
        if any(self.hello.model in w.resident for w in self.deps.registry.healthy()):
            old = self.tts
            with contextlib.suppress(DuplexError):
                await old.client.end_session(old.session_id)
            await self._bind_tts(self.hello.model)

    async def _on_reply_error(self, error: DuplexError) -> None:
        self.out.event(event("error", code=error.status.lower(), message=str(error), fatal=False))
        if isinstance(error, DaemonUnavailable) and self.tts is not None:
            failed = self.tts.worker
            self.deps.registry.mark_unhealthy(failed, str(error))
            self.tts = None
            try:
                bound = await self._bind_tts(self.hello.model, exclude={failed})
                self.out.event(event("worker", worker=bound.worker, model=bound.model_id))
            except DuplexError as exc:
                self.out.event(event("error", code="no_worker", message=str(exc), fatal=False))
        self._set_state(State.LISTENING)

    # -- helpers ---------------------------------------------------------------------------

    def _state_now(self) -> State:
        """The state after an await (mypy keeps narrowing attributes across awaits)."""
        return self.state

    def _set_state(self, state: State) -> None:
        if state != self.state:
            self.state = state
            self._emit_state()

    def _emit_state(self) -> None:
        self.out.event(event("state", state=self.state.value, t_ms=self._stream_ms))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("session task failed", session_id=self.id, error=repr(exc))
            self.out.event(event("error", code="internal", message=str(exc), fatal=False))


async def _preload(client: Any, model_id: str) -> None:
    try:
        await client.load_model(model_id)
    except DuplexError as exc:
        log.warning("preload failed", model=model_id, error=str(exc))


def _words(text: str) -> int:
    return len([w for w in text.split() if any(c.isalnum() for c in w)])
