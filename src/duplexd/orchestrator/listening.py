"""The listening path of a session: mic frames → VAD → transcriber, and the end of the turn.

Per 20 ms frame: resample to 16 kHz, keep a pre-roll (the VAD knows about speech only after
`min_speech_ms`, so the words before the onset come from here, with `PREROLL_PAD_MS` more so
the first word's attack survives), run the VAD, and while the user speaks feed the
transcriber, keep the turn's audio (for the end-of-turn model) and count silence.

End of turn: at the first silent windows after speech (`turn.speculate_after_ms`) the final decode
starts speculatively, the trailing silence is held back and `on_pause` tells the session (which
may start a speculative reply). Then either
- `silence` rule: the turn ends after `end_of_turn_silence_ms`; or
- Smart Turn (endofturn.py): at `smart_turn_ask_after_ms` (by default the pause itself) the
  model is asked; "complete" ends the turn once the silence reaches `smart_turn_min_silence_ms`
  (the decision is made off the critical path, beside the speculative decode, and waits for the
  floor) unless the speculative transcript stops mid-sentence (`transcript_check`,
  `endofturn.dangling`: then it keeps listening), or later, at the silence rule's
  `end_of_turn_silence_ms`, where Whisper was unsure of its last word (`unsure_word_p`: the
  word may be misheard, and with it whether the sentence is whole), nearly wrote another that
  stops mid-sentence ("leaves it" over "leaves at": `Transcript.endings`) or wrote no closing
  ".", "?" or "!" (`endofturn.trails_off`); "not done" keeps listening (and
  `on_not_done` tells the session). It asks again every `smart_turn_reask_ms`; at
  `smart_turn_max_silence_ms` the turn ends anyway.
If the user speaks again, all of it is dropped: the speculative final, any decision in flight
(a generation counter), and `on_resume` tells the session; the held silence is fed as audio.

The listener decides nothing about replies: it reports VAD events (`on_vad`), onsets
(`on_onset`, which may barge in, and answers False for an onset to ignore: our own echo), the
pause, resume and end of a turn to its session.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Coroutine
from typing import Any, Literal

import numpy as np

from duplexd.asr import Transcript
from duplexd.audio.frames import ASR_SAMPLE_RATE, FRAME_MS
from duplexd.audio.pcm import Int16Array, dbfs, rms
from duplexd.audio.resample import StreamResampler
from duplexd.config import SPEECH_END_LOOKBACK_MS, OrchestratorConfig
from duplexd.logging import get_logger
from duplexd.orchestrator.deps import Clock, Transcriber, Vad
from duplexd.orchestrator.endofturn import (
    MAX_AUDIO_S,
    Decision,
    EndOfTurn,
    dangling,
    guessed_words,
    trails_off,
)
from duplexd.orchestrator.telemetry import OrchTelemetry
from duplexd.orchestrator.turn import TurnTimes

__all__ = ["PREROLL_MS", "PREROLL_PAD_MS", "Listener"]

log = get_logger("duplexd.orchestrator.listening")

PREROLL_MS = 800  # audio kept before a VAD onset (onset is detected after speech starts)
PREROLL_PAD_MS = 200  # fed from before the VAD's speech start: the first word's attack

Reading = Literal["sure", "unsure", "dangling"]  # what the speculative transcript says of a turn
OnVad = Callable[[str, int], None]  # (kind, stream ms)
OnOnset = Callable[[int, float, float], bool]  # (speech_start_ms, now, mic dBFS) -> heed it
OnEndOfTurn = Callable[[TurnTimes], None]
Spawn = Callable[[Coroutine[Any, Any, None]], object]


class Listener:
    def __init__(
        self,
        config: OrchestratorConfig,
        input_rate: int,
        vad: Vad,
        transcriber: Transcriber,
        clock: Clock,
        *,
        on_vad: OnVad,
        on_onset: OnOnset,
        on_end_of_turn: OnEndOfTurn,
        on_pause: Callable[[], None] = lambda: None,
        on_resume: Callable[[], None] = lambda: None,
        on_not_done: Callable[[], None] = lambda: None,
        end_of_turn: EndOfTurn | None = None,
        telemetry: OrchTelemetry | None = None,
        spawn: Spawn,
    ) -> None:
        self.cfg = config
        self.vad, self.transcriber, self.clock = vad, transcriber, clock
        self.on_vad, self.on_onset, self.on_end_of_turn = on_vad, on_onset, on_end_of_turn
        self.on_pause, self.on_resume, self.on_not_done = on_pause, on_resume, on_not_done
        self.end_of_turn, self.telemetry = end_of_turn, telemetry
        self.spawn = spawn
        self._turn_audio: collections.deque[Int16Array] = collections.deque()
        self._turn_samples = 0
        self._generation = 0  # bumped when speech resumes: a decision in flight is stale
        self._asked_at_ms: int | None = None  # silence_ms at the last question to the model
        self._deciding = False
        self._complete: int | None = None  # the generation the model called complete, early
        self._complete_after_ms = 0  # …and the silence that turn ends at, and why
        self._complete_by = "model"
        self.last_decision_ms: float | None = None
        self._resampler = (
            StreamResampler(input_rate, ASR_SAMPLE_RATE) if input_rate != ASR_SAMPLE_RATE else None
        )
        self.stream_ms = 0
        self.user_speaking = False
        self._preroll: collections.deque[Int16Array] = collections.deque(
            maxlen=PREROLL_MS // FRAME_MS
        )
        self._silence_since: float | None = None
        self._silence_ms = 0
        self._quiet_ms = 0  # trailing frames quieter than turn.silence_dbfs while "speech"
        self._holding: list[Int16Array] | None = None  # silence held back after begin_final
        self._final_silence_ms = 0  # the silence at the end of the speculative final's audio

    @property
    def speculating(self) -> bool:
        """A speculative final decode is running (the user paused; not yet the end)."""
        return self._holding is not None

    def feed(self, pcm: bytes) -> None:
        """One mic frame at the client's sample rate."""
        now = self.clock()
        x = np.frombuffer(pcm, dtype="<i2").astype(np.int16)
        if self._resampler is not None:
            x = self._resampler.process(x)
        self.stream_ms += FRAME_MS
        self._preroll.append(x)
        mic_db = dbfs(rms(x))
        for ev in self.vad.process(x):
            self.on_vad(ev.kind, self.stream_ms)
            heed = ev.kind == "onset" and self.on_onset(ev.speech_start_ms, now, mic_db)
            if heed and not self.user_speaking:
                self._begin_utterance(ev.speech_start_ms)
        if self.user_speaking:
            self._track_silence(x, now, mic_db)

    def speech_start(self, now: float, speech_start_ms: int) -> float:
        """The clock time at which speech that the VAD dates at `speech_start_ms` began."""
        return now - (self.stream_ms - speech_start_ms) / 1000

    def forget_utterance(self) -> None:
        """Drop what was heard (a false interruption: a cough, our own echo)."""
        self.user_speaking, self._holding = False, None
        self._generation += 1
        self.transcriber.reset()

    async def speculative_transcript(self) -> Transcript:
        """The speculative final decode running since the pause (the utterance goes on)."""
        return await self.transcriber.peek_final()

    async def commit(self) -> Transcript:
        """The final transcript of the utterance that just ended."""
        return await self.transcriber.commit()

    def _begin_utterance(self, speech_start_ms: int) -> None:
        self.user_speaking = True
        self._silence_since, self._silence_ms, self._holding = None, 0, None
        self._quiet_ms = 0
        self._generation += 1
        self._asked_at_ms, self._complete = None, None
        self.transcriber.reset()
        self._turn_audio.clear()
        self._turn_samples = 0
        back = (max(self.stream_ms - speech_start_ms, FRAME_MS) + PREROLL_PAD_MS) // FRAME_MS + 1
        # The pre-roll ends with the frame being fed now, which `feed` passes on right after
        # (`_track_silence`): feeding it here too repeated 20 ms inside the first word.
        for chunk in list(self._preroll)[-back:-1]:
            self.transcriber.feed(chunk)
            self._keep(chunk)

    def _keep(self, x: Int16Array) -> None:
        """The turn's audio for the end-of-turn model: its last MAX_AUDIO_S seconds."""
        self._turn_audio.append(x)
        self._turn_samples += len(x)
        while self._turn_samples - len(self._turn_audio[0]) >= MAX_AUDIO_S * ASR_SAMPLE_RATE:
            self._turn_samples -= len(self._turn_audio.popleft())

    def _track_silence(self, x: Int16Array, now: float, level_db: float) -> None:
        self._keep(x)
        speech = self.vad.last_probability >= self.cfg.vad.threshold
        if speech:
            floor_db = self.cfg.turn.silence_dbfs
            quiet = floor_db is not None and level_db < floor_db
            self._quiet_ms = min(self._quiet_ms + FRAME_MS, SPEECH_END_LOOKBACK_MS) if quiet else 0
            if self._holding is not None:  # spoke again: drop the speculative final
                self.transcriber.cancel()
                for chunk in self._holding:
                    self.transcriber.feed(chunk)
                self._generation += 1  # a decision in flight answers a question now stale
                self._asked_at_ms, self._complete = None, None
                self.on_resume()
            self._silence_since, self._silence_ms, self._holding = None, 0, None
            self.transcriber.feed(x)
            return
        if self._silence_since is None:  # the silence began where the voice faded out
            self._silence_ms, self._quiet_ms = self._quiet_ms, 0
            self._silence_since = now - (self._silence_ms + FRAME_MS) / 1000
        self._silence_ms += FRAME_MS
        if self._holding is not None:
            self._holding.append(x)
        else:
            self.transcriber.feed(x)
            if self._silence_ms >= self.cfg.turn.speculate_after_ms:
                self.transcriber.begin_final()
                self._final_silence_ms = self._silence_ms  # at the end of what it decodes
                self._holding = []
                self.on_pause()
        self._maybe_end(now)

    def _maybe_end(self, now: float) -> None:
        """In a silence: end the turn, or ask the model, as the rule says."""
        turn = self.cfg.turn
        if self.end_of_turn is None:
            if self._silence_ms >= turn.end_of_turn_silence_ms:
                self._end(now, "silence")
        elif self._silence_ms >= turn.smart_turn_max_silence_ms:
            self._end(now, "max_silence")
        elif self._complete == self._generation:
            if self._silence_ms >= self._complete_after_ms:
                self._end(now, self._complete_by)  # called complete early: its floor has passed
        elif self._should_ask():
            self._asked_at_ms = self._silence_ms
            self._deciding = True
            audio = np.concatenate(list(self._turn_audio))
            self.spawn(self._ask(self.end_of_turn, audio, self._generation))

    def _should_ask(self) -> bool:
        turn = self.cfg.turn
        if self._deciding or self._silence_ms < turn.smart_turn_ask_after_ms:
            return False
        return self._asked_at_ms is None or (
            self._silence_ms - self._asked_at_ms >= turn.smart_turn_reask_ms
        )

    def _stale(self, generation: int) -> bool:
        """The user spoke again since `generation` (or the turn already ended)."""
        return generation != self._generation or not self.user_speaking

    async def _ask(self, model: EndOfTurn, audio: Int16Array, generation: int) -> None:
        try:
            decision = await model.decide(audio)
        except Exception as exc:  # a broken decision must not end the session: ask silence
            log.warning("end-of-turn decision failed", error=repr(exc))
            if self.telemetry is not None:
                self.telemetry.c_eot.labels("error").inc()
            return
        finally:
            self._deciding = False
        await self._decided(decision, generation)

    async def _decided(self, decision: Decision, generation: int) -> None:
        if self.telemetry is not None:
            self.telemetry.c_eot.labels("complete" if decision.complete else "incomplete").inc()
            self.telemetry.h_eot.observe(decision.model_ms)
            self.telemetry.eot_model.add(decision.model_ms)
        self.last_decision_ms = decision.model_ms
        if self._stale(generation):
            return  # the user spoke again meanwhile (or the turn ended by max silence)
        turn = self.cfg.turn
        after_ms, by = turn.smart_turn_min_silence_ms, "model"
        if decision.complete and turn.transcript_check:
            reading = await self._read_transcript(generation)
            if reading == "dangling":
                return  # keep listening: asked again after reask_ms, or max silence ends it
            if self._stale(generation):
                return
            if reading == "unsure":  # no sooner than the silence rule: the pause may go on
                after_ms, by = max(after_ms, turn.end_of_turn_silence_ms), "unsure_ending"
        if not decision.complete:
            self.on_not_done()
        elif self._silence_ms >= after_ms:
            self._end(self.clock(), by)
        else:  # answered before the shortest silence that may end this turn: end there
            self._complete, self._complete_after_ms, self._complete_by = generation, after_ms, by

    async def _read_transcript(self, generation: int) -> Reading:
        """The model says complete: does the speculative transcript stop mid-sentence, or end
        unsure (a last word Whisper was unsure of or nearly read as one that stops mid-sentence,
        or no closing punctuation)? (Both start at
        the pause, the decode first; a decision is often back first, so this may wait for the
        decode, which the reply needs anyway, still well before the minimum silence.)"""
        if self._holding is None:
            return "sure"
        self._deciding = True  # no new question to the model while we read the transcript
        try:
            final = await self.transcriber.peek_final()
        except RuntimeError:
            return "dangling"  # the user went on: that speculative final is gone
        finally:
            self._deciding = False
        if generation != self._generation:
            return "sure"  # stale: the caller drops the decision
        text, speech_end_ms = final.text, final.audio_ms - self._final_silence_ms
        unsure_below = self.cfg.turn.unsure_word_p
        guessed = guessed_words(final.word_p, final.word_start_ms, speech_end_ms, unsure_below)
        if dangling(text, guessed):
            if self.telemetry is not None:
                self.telemetry.c_eot.labels("overruled").inc()
            log.debug("end of turn overruled: the transcript stops mid-sentence", text=text)
            return "dangling"
        unsure = bool(final.word_p and final.word_p[-1] < unsure_below) or trails_off(text)
        if unsure or any(dangling(ending) for ending in final.endings):
            if self.telemetry is not None:
                self.telemetry.c_eot.labels("unsure").inc()
            log.debug("end of turn held to the silence rule: an unsure ending", text=text)
            return "unsure"
        return "sure"

    def _end(self, now: float, by: str) -> None:
        self.user_speaking = False
        self._generation += 1
        closed = self.vad.end_segment()  # words resumed from here on get an onset of their own
        if closed is not None:
            self.on_vad(closed.kind, self.stream_ms)
        if self.telemetry is not None:
            self.telemetry.c_turn_end.labels(by).inc()
        times = TurnTimes(speech_end=self._silence_since, endpoint=now, ended_by=by,
                          eot_model_ms=self.last_decision_ms)  # fmt: skip
        self.last_decision_ms = None
        self.on_end_of_turn(times)
