"""Text → speakable units, cut as LLM text streams in.

Piper yields one chunk per sentence and a long sentence takes ~0.5 s before its first sample
(FACTS.md), so first audio depends on handing the engine short units early. The chunker cuts:

- after a sentence end (``. ! ? …``, optionally followed by closing quotes or brackets);
- after a clause mark (``, ; : — –``) once the unit is long enough: ``first_min_chars`` for the
  first unit of an utterance (first audio is what the listener waits for), ``min_chars`` after
  (longer units give the engine better prosody, and it is busy speaking the previous one anyway);
- at a line break;
- before the word that would take the unit past ``max_chars``.

No unit is ever longer than ``max_chars``: the engine's memory and time grow with the length of
what it is handed (Piper took ~1 GB for one 4,000-character "word", and onnxruntime kept it), so
text without whitespace cannot make a unit of any length.

Cuts fall between words, and a word is complete only once whitespace follows it, so numbers
("3.14", "1,000"), URLs and a trailing partial word are not split; the partial word waits for
more text or `flush`. The one exception is a word longer than ``max_chars`` (no speakable word
is: a URL, a hash, a run of letters, streamed by mistake or on purpose): it is cut into pieces of
at most ``max_chars``, after punctuation inside it when there is some in the second half of a
piece (``-``, ``/``, ``.`` …), never before a combining mark, and each piece ends its unit. A
partial word is cut as soon as it is longer than ``max_chars``, so its pieces go out while the
rest of it is still streaming in. No cut after a small list of abbreviations ("Dr.", "e.g.") and
initials ("J.", "U.S."): "Dr. Smith" stays one unit. Units are whitespace-normalised, and
control characters (NUL, BEL, ESC, C1 …) count as whitespace: no engine speaks them, and eSpeak
refused a whole unit for one NUL ("embedded null byte").
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["TextChunker"]

_SENTENCE_END = frozenset(".!?…。！？")
_CLAUSE_MARKS = frozenset(",;:—–、，；：")
_CLOSERS = "\"'”’»)]}」』）】〕"
_OPENERS = "\"'“‘«([{「『（【〔"
# CJK marks end a word without a following space: "こんにちは。今日は" is two words.
_CJK_MARKS = "。！？、，；："
# Words whose final period is not a sentence end. Pragmatic, not a linguistics project: a missed
# cut costs a little latency, a wrong cut costs prosody ("Dr." / "Smith").
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "st", "prof", "sr", "jr", "vs", "etc", "cf", "approx", "fig"}
)
_INITIALS = re.compile(r"(?:[^\W\d_]\.)+")  # "J.", "U.S.", "e.g.", "i.e.", "a.m."
_TOKENS = re.compile(rf"\s+|\S*?[{_CJK_MARKS}]+[{re.escape(_CLOSERS)}]*|\S+")
_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")  # as str.splitlines sees them
# C0/C1 control characters that are not whitespace already: read as a space.
_CONTROLS = {c: " " for c in [*range(0x20), *range(0x7F, 0xA0)] if not chr(c).isspace()}
# Where a word too long for a unit is best cut: after one of these (URLs, paths, compounds).
_SOFT_BREAKS = frozenset("-‐/\\_.,;:!?&+=|)]}>…—–、，；：。！？")


class TextChunker:
    """Feed text with `push` as it arrives; `flush` at the end of the utterance."""

    def __init__(
        self, *, first_min_chars: int = 12, min_chars: int = 40, max_chars: int = 220
    ) -> None:
        if first_min_chars <= 0 or not 0 < min_chars <= max_chars:
            raise ValueError("need 0 < first_min_chars and 0 < min_chars <= max_chars")
        self.first_min_chars = first_min_chars
        self.min_chars = min_chars
        self.max_chars = max_chars
        self._partial = ""  # a word not yet followed by whitespace
        self._words: list[str] = []  # the unit being built
        self._length = 0  # len(" ".join(self._words))
        self._first = True  # no unit emitted yet in this utterance
        self._out: list[str] = []

    def push(self, text: str) -> list[str]:
        """Add streamed text (it may end mid-word); returns the units now complete."""
        tokens = _TOKENS.findall(self._partial + text.translate(_CONTROLS))
        self._partial = tokens.pop() if tokens and not tokens[-1][0].isspace() else ""
        for token in tokens:
            if token[0].isspace():
                if _LINE_BREAKS.intersection(token):
                    self._cut()
            else:
                self._add_word(token)
        self._partial = self._add_pieces(self._partial)  # a partial word too long for any unit
        if self._words and self._length + 1 + len(self._partial) > self.max_chars:
            self._cut()  # the partial word only grows: it will not fit in this unit
        return self._take()

    def flush(self) -> list[str]:
        """End of utterance: everything left, as units (empty if only whitespace remains)."""
        if self._partial:
            self._add_word(self._partial)
            self._partial = ""
        self._cut()
        self._first = True
        return self._take()

    # -- internals ------------------------------------------------------------------------

    def _add_word(self, word: str) -> None:
        word = self._add_pieces(word)
        self._append(word)
        if self._cuts_after(word):
            self._cut()

    def _add_pieces(self, word: str) -> str:
        """Add the leading pieces of a word longer than `max_chars`, each ending its unit;
        returns the rest (at most `max_chars`: the whole word when it fits)."""
        while len(word) > self.max_chars:
            cut = _split_point(word, self.max_chars)
            self._append(word[:cut])
            self._cut()
            word = word[cut:]
        return word

    def _append(self, word: str) -> None:
        if self._words and self._length + 1 + len(word) > self.max_chars:
            self._cut()
        self._length += len(word) + (1 if self._words else 0)
        self._words.append(word)

    def _cuts_after(self, word: str) -> bool:
        core = word.rstrip(_CLOSERS)
        if not core:
            return False
        if core[-1] in _SENTENCE_END:
            return not _is_abbreviation(core) and self._has_letter()
        if core[-1] in _CLAUSE_MARKS:
            return self._length >= (self.first_min_chars if self._first else self.min_chars)
        return False

    def _has_letter(self) -> bool:
        # "1." opening a numbered list item is not a sentence of its own.
        return any(ch.isalpha() for w in self._words for ch in w)

    def _cut(self) -> None:
        if self._words:
            self._out.append(" ".join(self._words))
            self._words, self._length, self._first = [], 0, False

    def _take(self) -> list[str]:
        out, self._out = self._out, []
        return out


def _split_point(word: str, limit: int) -> int:
    """Where to cut `word` (longer than `limit`): after the last soft break in the second half
    of its first `limit` characters, else at `limit`; never before a combining mark."""
    for end in range(limit, limit // 2, -1):
        if word[end - 1] in _SOFT_BREAKS:
            return end
    end = limit
    while end > 1 and unicodedata.combining(word[end]):
        end -= 1
    return end


def _is_abbreviation(core: str) -> bool:
    if not core.endswith(".") or core.endswith(".."):
        return False  # "!", "?", "…" and "..." always end a sentence
    bare = core.lstrip(_OPENERS)
    return bare[:-1].lower() in _ABBREVIATIONS or _INITIALS.fullmatch(bare) is not None
