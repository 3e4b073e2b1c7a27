"""Smart Turn, the real model from the pipecat-ai wheel: decisions, and the fallback that says
which file is wrong instead of crashing (or silently ending turns some other way)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest

from duplexd.devkit.speech import speech as speak
from duplexd.orchestrator.endofturn import (
    SmartTurn,
    _float_softmax,
    bundled_model,
    dangling,
    guessed_words,
    load_end_of_turn,
    trails_off,
)


@pytest.fixture(scope="module")
def model() -> SmartTurn:
    return SmartTurn(bundled_model())


def test_a_decision_is_a_probability_from_the_turns_audio(model: SmartTurn) -> None:
    audio = speak("What time is it in Paris right now?")
    decision = asyncio.run(model.decide(audio))
    assert 0.0 <= decision.probability <= 1.0
    assert decision.complete == (decision.probability >= model.threshold)
    assert decision.model_ms > 0


def test_only_the_last_eight_seconds_matter(model: SmartTurn) -> None:
    audio = speak("Book me a table for two people tonight.")
    long = np.concatenate([np.full(16_000 * 12, 3000, dtype=np.int16), audio])
    a, b = asyncio.run(model.decide(audio)), asyncio.run(model.decide(long[-16_000 * 8 :]))
    c = asyncio.run(model.decide(long))
    assert c.probability == pytest.approx(b.probability, abs=1e-6)
    assert 0.0 <= a.probability <= 1.0


def test_its_softmaxes_run_in_float_near_the_graph_computed_literally(model: SmartTurn) -> None:
    import onnx
    import onnxruntime as ort

    rewritten = _float_softmax(ort, bundled_model())
    assert rewritten is not None
    ops = [n.op_type for n in onnx.load_from_string(rewritten).graph.node]
    assert "QLinearSoftmax" not in ops and ops.count("Softmax") >= 4
    # the reference: the QDQ graph as written, every op in float (slow, exact to the graph)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    cpu = ["CPUExecutionProvider"]
    literal = ort.InferenceSession(str(bundled_model()), options, providers=cpu)
    fused = SmartTurn(bundled_model(), softmax="int8")
    texts = ("What time is it?", "I'd like to book a table for", "Thank you very much.",
             "Can you tell me about the", "Okay, goodbye.", "Where is the nearest")  # fmt: skip
    ours, theirs, exact = [], [], []
    for text in texts:
        for pause_ms in (64, 200):
            audio = np.concatenate([speak(text), np.zeros(pause_ms * 16, dtype=np.int16)])
            ours.append(model._decide_sync(audio).probability)
            theirs.append(fused._decide_sync(audio).probability)
            x = np.pad(audio.astype(np.float32) / 32768.0, (16_000 * 8 - len(audio), 0))
            features = model._features(x, do_normalize=True)[None]
            out = literal.run(None, {"input_features": features})
            exact.append(float(np.asarray(out[0]).ravel()[0]))
    ours_off, theirs_off = np.abs(np.subtract(ours, exact)), np.abs(np.subtract(theirs, exact))
    # 8-bit attention is coarse: both kernels land ~0.06 from the float graph on average (up to
    # ~0.2 near 0.5); the float softmax is no further from it than onnxruntime's fused one
    assert ours_off.mean() < 0.1 and ours_off.max() < 0.35, (ours, exact)
    assert ours_off.mean() <= theirs_off.mean() + 0.02, (ours, theirs, exact)
    assert np.abs(np.subtract(ours, theirs)).max() > 1e-4  # the rewrite took effect
    fused.close()


def test_decisions_go_ahead_of_other_daemons_work_where_the_os_allows(model: SmartTurn) -> None:
    policy = model._pool.submit(os.sched_getscheduler, 0).result()
    if os.geteuid() == 0:  # root may: the real-time class, where a nice value's rank stops
        assert model.priority == "real-time" and policy == os.SCHED_FIFO
    else:
        assert policy == os.SCHED_OTHER and model.priority.startswith("nice")
    plain = SmartTurn(bundled_model(), realtime=False)
    try:
        assert plain._pool.submit(os.sched_getscheduler, 0).result() == os.SCHED_OTHER
        assert plain.priority == ("nice -20" if os.geteuid() == 0 else plain.priority)
    finally:
        plain.close()


def test_a_graph_with_no_8bit_softmax_runs_as_it_is(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"])], "plain", [x], [y])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    assert _float_softmax(ort, path) is None


def test_a_corrupt_model_falls_back_to_silence_and_says_which_file(tmp_path: Path) -> None:
    bad = tmp_path / "smart-turn.onnx"
    bad.write_bytes(b"\x08\x01this is not an onnx graph" * 10)
    chosen, warning = load_end_of_turn("smart-turn", bad, threshold=0.5)
    assert chosen is None
    assert warning is not None and str(bad) in warning and "silence" in warning


def test_a_missing_model_falls_back_and_says_which_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    chosen, warning = load_end_of_turn("smart-turn", missing, threshold=0.5)
    assert chosen is None and warning is not None and str(missing) in warning


def test_the_silence_rule_needs_no_model() -> None:
    assert load_end_of_turn("silence", None, threshold=0.5) == (None, None)


@pytest.mark.parametrize(
    ("text", "unfinished"),
    [
        ("I'd like to book a table for.", True),  # Whisper puts a period after a fragment
        ("What is the weather like in", True),
        ("Can you tell me about the...", True),
        ("My favourite colour is.", True),  # a copula after a noun waits for its complement
        ("The train to London leaves at", True),
        ("Salt and", True),
        ("Is it going to?", True),  # a rising fragment Whisper punctuates as a question
        ("Can you tell me about the?", True),
        ("Yes, it is.", False),  # ... after a pronoun it is an answer
        ("Here you are.", False),
        ("What are you looking for?", False),  # a question may end in a preposition
        ("Thank you very much.", False),
        ("Please remind me to call.", False),  # a transitive verb: beyond a word list
        ("Wake me up at 7.", False),  # Whisper writes numbers in digits: "7" is the word
        ("I'd like to book a table for 2.", False),
        ("", False),
        ("...", False),
    ],
)
def test_a_transcript_that_stops_mid_sentence_is_dangling(text: str, unfinished: bool) -> None:
    assert dangling(text) is unfinished


@pytest.mark.parametrize(
    ("text", "guessed", "unfinished"),
    [
        ("I'd like to book a table for two.", 1, True),  # Whisper's guess at "a table for"
        ("I'd like to book a table for two.", 0, False),  # ... or said: a whole sentence
        ("Can you tell me about this?", 1, True),  # without its guess: a statement in "about"
        ("Please remind me to call you.", 2, True),  # two guessed words
        ("Please remind me to call you.", 1, False),  # "… to call" may end a sentence
        ("Could you book me a taxi to the airport at six.", 0, False),
        ("Yes.", 1, False),  # nothing is left to stop anywhere
    ],
)
def test_words_whisper_guessed_are_read_as_maybe_never_said(
    text: str, guessed: int, unfinished: bool
) -> None:
    assert dangling(text, guessed) is unfinished


@pytest.mark.parametrize(
    ("text", "trailing"),
    [
        ("What time is it?", False),
        ("Hello there.", False),
        ("Turn it off!", False),
        ('He said "stop."', False),  # a closing quote after the full stop
        ("my favorite colors", True),  # "My favourite colour is" + a pause: no full stop
        ("the train to London leaves it", True),
        ("Tell me that...", True),  # Whisper's ellipsis: the voice trailed off
        ("Tell me that\u2026", True),
        ("I need a table for f-", True),  # a word cut off
        ("", False),  # nothing said: a cough or a breath
    ],
)
def test_a_transcript_without_closing_punctuation_trails_off(text: str, trailing: bool) -> None:
    assert trails_off(text) is trailing


def test_a_guessed_word_is_unsure_and_starts_where_the_speech_had_ended() -> None:
    # "… a table for two.": "two" at 0.46, starting at the end of speech (1450 ms)
    p, starts = (0.9, 0.98, 0.46), (900.0, 1200.0, 1460.0)
    assert guessed_words(p, starts, 1450, 0.7) == 1
    assert guessed_words(p, starts, 1450, 0.4) == 0  # sure enough at this threshold
    assert guessed_words(p, (900.0, 1000.0, 1200.0), 1450, 0.7) == 0  # said well before the end
    assert guessed_words((0.9, 0.5, 0.3), (900.0, 1400.0, 1500.0), 1450, 0.7) == 2
    assert guessed_words((0.9, 0.3, 0.98), (900.0, 1400.0, 1500.0), 1450, 0.7) == 0  # sure last
    assert guessed_words(p, None, 1450, 0.7) == 0  # an engine that cannot tell: trust the text
    assert guessed_words(None, starts, 1450, 0.7) == 0
