"""Smart Turn, the real model from the pipecat-ai wheel: decisions, and the fallback that says
which file is wrong instead of crashing (or silently ending turns some other way)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from duplexd.devkit.speech import speech as speak
from duplexd.orchestrator.endofturn import SmartTurn, bundled_model, dangling, load_end_of_turn


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
        ("", False),
        ("...", False),
    ],
)
def test_a_transcript_that_stops_mid_sentence_is_dangling(text: str, unfinished: bool) -> None:
    assert dangling(text) is unfinished
