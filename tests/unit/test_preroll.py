"""The listener's pre-roll: what reaches the transcriber starts before the speech does.

Real Silero VAD, real speech (espeak and the Piper voice), the session's `Listener`, and a
transcriber that only records what it is fed. The VAD reports an onset `min_speech_ms` after
the first window it is sure of, and that window starts after the word does: 20-60 ms of these
onsets are below its threshold. The listener feeds its pre-roll from `PREROLL_PAD_MS` before
the VAD's speech start, so the attack is kept whatever the input rate.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import numpy as np
import pytest

from duplexd.asr import Transcript
from duplexd.audio.frames import FRAME_MS
from duplexd.audio.resample import resample_once
from duplexd.config import OrchestratorConfig
from duplexd.devkit.speech import concat, piper_speech, silence, speech
from duplexd.orchestrator.listening import PREROLL_PAD_MS, Listener
from duplexd.vad import create_vad
from duplexd.vad.base import VADParams

LOUD = 64  # what speech() trims at: below this, espeak's own near-silence


class Recorder:
    """A transcriber that keeps what it is fed for the utterance."""

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []

    def feed(self, pcm16: np.ndarray) -> None:
        self.chunks.append(pcm16.copy())

    def reset(self) -> None:
        self.chunks = []

    def begin_final(self) -> None: ...
    def cancel(self) -> None: ...
    async def commit(self) -> Transcript: ...  # type: ignore[empty-body]
    async def peek_final(self) -> Transcript: ...  # type: ignore[empty-body]
    async def aclose(self) -> None: ...


def _fed(stream_16k: np.ndarray, rate: int) -> np.ndarray:
    """What the transcriber got of the first utterance of `stream_16k`, sent at `rate`."""
    recorder = Recorder()
    ended: list[bool] = []

    def drop(coro: Coroutine[Any, Any, None]) -> None:
        coro.close()

    listener = Listener(
        OrchestratorConfig(), rate, create_vad("silero", VADParams()), recorder,  # type: ignore[arg-type]
        lambda: 0.0, on_vad=lambda kind, t: None, on_onset=lambda start, now, db: True,
        on_end_of_turn=lambda times: ended.append(True), spawn=drop,
    )  # fmt: skip
    pcm = stream_16k if rate == 16_000 else resample_once(stream_16k, 16_000, rate)
    step = rate // 50
    for i in range(0, len(pcm) - step + 1, step):
        listener.feed(pcm[i : i + step].astype("<i2").tobytes())
        if ended:
            break
    assert recorder.chunks, "no onset"
    return np.concatenate(recorder.chunks)


def _leading_quiet_ms(fed: np.ndarray) -> float:
    loud = np.flatnonzero(np.abs(fed.astype(np.int32)) > LOUD)
    return float(loud[0]) / 16 if len(loud) else float("inf")


UTTERANCES = [
    ("espeak", "She sells sea shells by the sea shore."),  # onsets the VAD dates 40-60 ms late
    ("espeak", "Fine, thanks for asking."),
    ("espeak", "Hello there!"),
    ("piper", "Six sick sheep."),
]


@pytest.mark.parametrize("rate", [16_000, 48_000])
@pytest.mark.parametrize(("voice", "text"), UTTERANCES)
@pytest.mark.parametrize("lead_ms", [340, 1000])
def test_the_transcriber_gets_the_speech_from_before_its_first_sample(
    voice: str, text: str, lead_ms: int, rate: int
) -> None:
    said = speech(text) if voice == "espeak" else piper_speech(text)
    fed = _fed(concat(silence(lead_ms), said, silence(1500)), rate)
    quiet = _leading_quiet_ms(fed)
    # all of the attack, with some of the pad before it (the VAD is up to ~100 ms late)
    assert FRAME_MS <= quiet <= PREROLL_PAD_MS + 60, (quiet, text)
    start = round(quiet * 16)
    kept = fed[start : start + 16 * 200]  # the first 200 ms of speech, as fed
    if rate == 16_000:
        assert np.array_equal(kept, said[: len(kept)])  # every sample, from the first one


def test_speech_from_the_first_frame_is_fed_whole() -> None:
    """The demo's user speaks at once: nothing before the first frame, nothing lost after."""
    said = speech("Hello there, how are you today?")
    fed = _fed(concat(said, silence(1500)), 16_000)
    assert np.array_equal(fed[: len(said)], said)
