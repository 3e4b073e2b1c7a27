"""TextChunker: where streamed text is cut into units for the engine."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duplexd.tts.chunker import TextChunker


def chunk_all(text: str, chunker: TextChunker | None = None) -> list[str]:
    chunker = chunker or TextChunker()
    return chunker.push(text) + chunker.flush()


def sentence_only() -> TextChunker:
    """Clause marks never reach these thresholds: only sentence ends and newlines cut."""
    return TextChunker(first_min_chars=1000, min_chars=1000, max_chars=2000)


ANSWER = (
    "Well, the short answer is yes, but there are a few caveats you should know about. "
    "First, the scheduler keeps a refcount per model; second, it evicts idle models after "
    "a TTL. Finally, pinned models stay resident no matter what."
)


def llm_tokens(text: str) -> list[str]:
    """Like an LLM stream: leading spaces, and longer words split into two sub-word tokens."""
    tokens = []
    for token in re.findall(r"\s*\S+", text):
        cut = len(token) // 2 if len(token.strip()) > 6 else len(token)
        tokens += [token[:cut], token[cut:]] if cut < len(token) else [token]
    return tokens


def test_streamed_answer_gives_first_unit_at_the_first_long_enough_clause() -> None:
    chunker = TextChunker()
    tokens = llm_tokens(ANSWER)
    arrivals: list[tuple[int, str]] = []
    for i, token in enumerate(tokens):
        arrivals += [(i, unit) for unit in chunker.push(token)]
    arrivals += [(len(tokens), unit) for unit in chunker.flush()]
    first_at, first = arrivals[0]
    # "Well," is shorter than first_min_chars; "…is yes," is not, and it is complete as soon as
    # the next token (" but") brings the whitespace after it.
    assert first == "Well, the short answer is yes,"
    assert tokens[first_at] == " but"
    assert first_at < len(tokens) // 4
    assert [unit for _, unit in arrivals] == [
        "Well, the short answer is yes,",
        "but there are a few caveats you should know about.",
        "First, the scheduler keeps a refcount per model;",
        "second, it evicts idle models after a TTL.",
        "Finally, pinned models stay resident no matter what.",
    ]


def test_first_unit_threshold_then_later_threshold() -> None:
    chunker = TextChunker(first_min_chars=5, min_chars=30)
    text = "Okay, so here we go, then more, and finally the last clause, done"
    assert chunk_all(text, chunker) == [
        "Okay,",
        "so here we go, then more, and finally the last clause,",
        "done",
    ]


@pytest.mark.parametrize("mark", [",", ";", ":", " —", " –"])
def test_each_clause_mark_cuts(mark: str) -> None:
    text = f"This clause is long enough{mark} and this one follows"
    assert chunk_all(text) == [f"This clause is long enough{mark}", "and this one follows"]


def test_abbreviations_and_initials_do_not_end_sentences() -> None:
    text = (
        "Dr. Smith met Mr. Jones at 5 p.m. on Baker St. near J. R. R. Tolkien's house, "
        "e.g. for tea, i.e. briefly. Then they left, etc. and more vs. less! Done? Yes… ok."
    )
    assert chunk_all(text, sentence_only()) == [
        "Dr. Smith met Mr. Jones at 5 p.m. on Baker St. near J. R. R. Tolkien's house, "
        "e.g. for tea, i.e. briefly.",
        "Then they left, etc. and more vs. less!",
        "Done?",
        "Yes…",
        "ok.",
    ]


def test_numbers_are_never_split() -> None:
    chunker = TextChunker(first_min_chars=1, min_chars=1)
    text = "Pi is 3.14 and a grand is 1,000 dollars. It costs $1,000.50 at 3:30 today."
    expected = ["Pi is 3.14 and a grand is 1,000 dollars.", "It costs $1,000.50 at 3:30 today."]
    assert chunk_all(text, chunker) == expected
    streamed = [u for ch in text for u in chunker.push(ch)] + chunker.flush()
    assert streamed == expected


def test_numbered_list_items_stay_whole_and_lines_cut() -> None:
    text = "Steps:\n1. Install it.\n2. Run it\n\n3. Enjoy"
    assert chunk_all(text, sentence_only()) == [
        "Steps:",
        "1. Install it.",
        "2. Run it",
        "3. Enjoy",
    ]


def test_closing_quotes_and_brackets_follow_the_sentence_end() -> None:
    text = 'She said "Stop!" and left. (It was late.) "Why?" he asked.'
    assert chunk_all(text, sentence_only()) == [
        'She said "Stop!"',
        "and left.",
        "(It was late.)",
        '"Why?"',
        "he asked.",
    ]


def test_max_chars_forces_a_cut_at_the_last_space() -> None:
    chunker = TextChunker(min_chars=20, max_chars=30)
    words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor"
    units = chunk_all(words, chunker)
    assert units == [
        "lorem ipsum dolor sit amet",
        "consectetur adipiscing elit",
        "sed do eiusmod tempor",
    ]
    assert " ".join(units) == words


def test_a_word_longer_than_max_chars_is_cut_into_pieces() -> None:
    chunker = TextChunker(min_chars=5, max_chars=10)
    assert chunk_all("ab supercalifragilistic cd", chunker) == [
        "ab",
        "supercalif",
        "ragilistic",
        "cd",
    ]


def test_a_4000_character_word_never_makes_a_unit_longer_than_max_chars() -> None:
    """Issue item 9: one unbreakable 4,000-character word was one unit, and Piper took ~1 GB
    of memory synthesizing it (kept by onnxruntime)."""
    word = "".join(chr(ord("a") + i % 26) for i in range(4000))
    units = chunk_all(f"Say {word} now.")
    assert max(len(u) for u in units) <= 220
    assert "".join("".join(units).split()) == f"Say{word}now."


def test_a_long_streamed_word_goes_out_in_pieces_before_it_ends() -> None:
    """No whitespace ever comes: the pieces must not wait for it (or for `flush`)."""
    chunker = TextChunker(max_chars=50)
    units: list[str] = []
    for _ in range(400):
        units += chunker.push("xyz")  # 1,200 characters, no space
    assert len(units) == 1200 // 50 - 1  # all but the last piece, which may still grow
    assert all(len(u) == 50 for u in units)
    rest = chunker.flush()
    assert len(rest) == 1 and len(rest[0]) == 50
    assert "".join(units + rest) == "xyz" * 400


def test_long_words_are_cut_after_punctuation_inside_them() -> None:
    url = "https://example.com/a/rather/long/path/to/some/resource?query=yes&more=no"
    assert chunk_all(url, TextChunker(min_chars=10, max_chars=40)) == [
        "https://example.com/a/rather/long/path/",
        "to/some/resource?query=yes&more=no",
    ]
    # a combining mark stays with its letter
    accented = "e\u0301" * 30  # 60 code points
    units = chunk_all(accented, TextChunker(min_chars=5, max_chars=7))
    assert all(not unicodedata.combining(u[0]) for u in units)
    assert "".join(units) == accented


def test_unit_is_released_as_soon_as_the_partial_word_cannot_fit() -> None:
    chunker = TextChunker(min_chars=20, max_chars=20)
    assert chunker.push("one two three four ") == []
    assert chunker.push("fivesixseven") == ["one two three four"]
    assert chunker.flush() == ["fivesixseven"]


def test_partial_words_wait_for_whitespace_or_flush() -> None:
    chunker = TextChunker()
    assert chunker.push("Hi.") == []  # "Hi.x" could still be coming
    assert chunker.push(" ") == ["Hi."]
    assert chunker.push("Hello wor") == []
    assert chunker.push("ld") == []
    assert chunker.flush() == ["Hello world"]


def test_flush_normalises_whitespace_and_drops_empty_units() -> None:
    chunker = TextChunker()
    assert chunker.push("  \t ") == []
    assert chunker.flush() == []
    assert chunk_all("  spaced\t\tout   words  ") == ["spaced out words"]
    assert chunk_all("") == []


def test_control_characters_read_as_spaces() -> None:
    """The fuzz found it: eSpeak failed a whole unit (INTERNAL) for one NUL in the text."""
    assert chunk_all("Hi\x00there\x07. \x1b[1mBold\x9b, ok\x7f") == ["Hi there .", "[1mBold , ok"]
    assert chunk_all("\x00\x01\x02") == []


def test_flush_starts_a_new_utterance() -> None:
    chunker = TextChunker(first_min_chars=5, min_chars=100)
    assert chunk_all("First, one, two", chunker) == ["First,", "one, two"]
    assert chunk_all("Again, one, two", chunker) == ["Again,", "one, two"]


def test_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError, match="min_chars"):
        TextChunker(min_chars=50, max_chars=10)


# -- the property ------------------------------------------------------------------------------

PIECES = [*"ab .,;:!?…—–\"')(\n\t", "  ", "\u2028", "Mr.", "e.g.", "3.14", "1,000", "J.", "word"]
PUNCTUATED = st.lists(st.sampled_from(PIECES), max_size=120).map("".join)


@settings(max_examples=200, deadline=None)
@given(
    text=st.one_of(PUNCTUATED, st.text(max_size=300)),
    data=st.data(),
    first_min=st.integers(1, 30),
    min_chars=st.integers(1, 60),
    extra=st.integers(0, 100),
)
def test_units_preserve_the_words_for_any_split(
    text: str, data: st.DataObject, first_min: int, min_chars: int, extra: int
) -> None:
    max_chars = min_chars + extra
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=20)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    chunker = TextChunker(first_min_chars=first_min, min_chars=min_chars, max_chars=max_chars)
    units = [u for piece in pieces for u in chunker.push(piece)] + chunker.flush()
    text = "".join(" " if unicodedata.category(c) == "Cc" else c for c in text)  # as it reads it
    # nothing lost, added or reordered; every unit within max_chars, whatever the text
    assert "".join("".join(units).split()) == "".join(text.split())
    for unit in units:
        assert unit and unit == " ".join(unit.split())
        assert len(unit) <= max_chars
    # and a word that fits is never cut (CJK marks end words without a space: not those)
    tokens = {t for unit in units for t in unit.split()}
    for word in text.split():
        if len(word) <= max_chars and not any(mark in word for mark in "。！？、，；："):
            assert word in tokens


def test_japanese_without_spaces_cuts_at_its_own_marks() -> None:
    chunker = sentence_only()
    units: list[str] = []
    for char in "こんにちは。今日はいい天気ですね！「はい」と言った。":  # streamed char by char
        units += chunker.push(char)
    units += chunker.flush()
    assert units == ["こんにちは。", "今日はいい天気ですね！", "「はい」と言った。"]
    # 、 is a clause mark like a comma
    clauses = TextChunker(first_min_chars=3, min_chars=3, max_chars=200)
    assert chunk_all("えっと、駅はどこですか。", clauses) == ["えっと、", "駅はどこですか。"]
