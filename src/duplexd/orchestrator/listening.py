"""The listening path of a session: mic frames → VAD → transcriber, and the end of the turn.

Per 20 ms frame: resample to 16 kHz, keep a pre-roll (the VAD knows about speech only after
`min_speech_ms`, so the words before the onset come from here), run the VAD, and while the user
speaks feed the transcriber and count silence.

End of turn: at the first silent windows after speech (`SPECULATE_AFTER_MS`) the final decode
starts speculatively and the trailing silence is held back, so when `end_of_turn_silence_ms`
has passed the transcript is usually ready. If the user speaks again the speculation is
dropped and the held silence is fed as ordinary audio.

The listener decides nothing about replies: it reports VAD events (`on_vad`), onsets
(`on_onset`, which may barge in, and answers False for an onset to ignore: our own echo) and
the end of a turn (`on_end_of_turn`) to its session.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import numpy as np

from duplexd.asr import Transcript
from duplexd.audio.frames import ASR_SAMPLE_RATE, FRAME_MS
from duplexd.audio.pcm import Int16Array, dbfs, rms
from duplexd.audio.resample import StreamResampler
from duplexd.config import OrchestratorConfig
from duplexd.orchestrator.deps import Clock, Transcriber, Vad
from duplexd.orchestrator.turn import TurnTimes

__all__ = ["PREROLL_MS", "SPECULATE_AFTER_MS", "Listener"]

SPECULATE_AFTER_MS = 64  # two Silero windows of silence: start the final decode
PREROLL_MS = 600  # audio kept before a VAD onset (onset is detected after speech starts)

OnVad = Callable[[str, int], None]  # (kind, stream ms)
OnOnset = Callable[[int, float, float], bool]  # (speech_start_ms, now, mic dBFS) -> heed it
OnEndOfTurn = Callable[[TurnTimes], None]


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
    ) -> None:
        self.cfg = config
        self.vad, self.transcriber, self.clock = vad, transcriber, clock
        self.on_vad, self.on_onset, self.on_end_of_turn = on_vad, on_onset, on_end_of_turn
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
        self._holding: list[Int16Array] | None = None  # silence held back after begin_final

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
            self._track_silence(x, now)

    def speech_start(self, now: float, speech_start_ms: int) -> float:
        """The clock time at which speech that the VAD dates at `speech_start_ms` began."""
        return now - (self.stream_ms - speech_start_ms) / 1000

    def forget_utterance(self) -> None:
        """Drop what was heard (a false interruption: a cough, our own echo)."""
        self.user_speaking, self._holding = False, None
        self.transcriber.reset()

    async def commit(self) -> Transcript:
        """The final transcript of the utterance that just ended."""
        return await self.transcriber.commit()

    def _begin_utterance(self, speech_start_ms: int) -> None:
        self.user_speaking = True
        self._silence_since, self._silence_ms, self._holding = None, 0, None
        self.transcriber.reset()
        back = max(self.stream_ms - speech_start_ms, FRAME_MS) // FRAME_MS + 2
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
            if self._silence_ms >= SPECULATE_AFTER_MS:
                self.transcriber.begin_final()
                self._holding = []
        if self._silence_ms >= self.cfg.turn.end_of_turn_silence_ms:
            self.user_speaking = False
            self.on_end_of_turn(TurnTimes(speech_end=self._silence_since, endpoint=now))
