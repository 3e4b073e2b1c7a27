"""What the client shows as the bot's words: the clauses whose audio played, cut where a
barge-in cut them (`duplexctl.client.heard`), driven the way the client drives it: events and
frames in the order the orchestrator sends them, playout frame by frame."""

from __future__ import annotations

import collections
from typing import Any

from duplexctl.client.heard import CUT, DEFAULT_CPS, Clause, HeardText, heard_words
from duplexd.audio.jitter import JitterBuffer
from duplexd.orchestrator.protocol import FLAG_LAST

ONCE = "Once upon a time,"
TOWN = "in a small town by the sea, there lived a lighthouse keeper named Ada."
EVERY = "Every night she climbed the long spiral stairs."


class Client:
    """A speaker on a jitter buffer, as `LiveConversation` plays one, fed by a paced server:
    the socket delivers (in order) just enough to keep 60 ms queued."""

    def __init__(self) -> None:
        self.heard = HeardText()
        self.jitter = JitterBuffer()
        self.wire: collections.deque[dict[str, Any] | tuple[int, int]] = collections.deque()
        self.over: list[tuple[str, bool]] = []  # (shown text, cut) of each clause once over
        self.t_ms = 0.0

    def send(self, kind: str, turn: int = 1, **fields: Any) -> None:
        self.wire.append({"type": kind, "turn": turn, **fields})

    def clause(self, text: str, frames: int, turn: int = 1, *, last: bool = False) -> None:
        """The orchestrator's `reply` event for a clause, then its frames."""
        self.send("reply", turn, text=text, final=False)
        self.wire.extend((turn, FLAG_LAST if last and i == frames - 1 else 0)
                         for i in range(frames))  # fmt: skip

    def flush(self, turn: int = 1) -> None:
        """Barge-in: the server drops the audio not yet sent, then sends `flush`."""
        self.wire = collections.deque(m for m in self.wire if isinstance(m, dict))
        self.send("flush", turn)
        self.deliver()

    def deliver(self, frames: int = 1 << 30) -> None:
        while self.wire and frames > 0:
            item = self.wire.popleft()
            if isinstance(item, dict):
                if item["type"] == "flush":
                    self.jitter.flush()
                self._over(self.heard.on_event(item))
            else:
                self.jitter.push(bytes(1920), self.heard.frame(*item))
                frames -= 1

    def play(self, frames: int) -> None:
        for _ in range(frames):
            self.deliver(max(3 - self.jitter.depth_ms // 20, 0))
            self.jitter.pop()
            self.t_ms += 20
            self._over(self.heard.played(self.jitter.last_tag, self.t_ms))
            if self.jitter.depth_ms == 0:
                self._over(self.heard.drained())

    def _over(self, clauses: list[Clause]) -> None:
        self.over += [(c.shown(), c.cut) for c in clauses if c.played or c.cut]


def test_a_reply_played_to_the_end_is_heard_whole_clause_by_clause() -> None:
    c = Client()
    c.clause(ONCE, 60)
    c.clause(TOWN, 250, last=True)
    c.send("turn", reply_text=f"{ONCE} {TOWN}", interrupted=False)
    c.play(70)
    assert c.over == [(ONCE, False)]  # over once the next clause plays, not before
    assert c.heard.text(1) == f"{ONCE} {TOWN}"  # what is queued will play: heard
    c.play(300)
    assert c.over == [(ONCE, False), (TOWN, False)]
    assert c.heard.cps == len(ONCE + TOWN) / 6.2  # the voice's pace, measured


def test_a_barge_in_shows_the_words_that_played_and_the_cut() -> None:
    c = Client()
    c.clause(ONCE, 60)
    c.clause(TOWN, 250)
    c.play(60 + 25)  # the first clause, then 0.5 s of the next
    c.flush()
    said = c.heard.text(1, interrupted=True)
    pace = len(ONCE) / 1.2  # measured on the first clause: 14.2 characters a second
    assert said == f"{ONCE} {heard_words(TOWN, 25, pace)} {CUT}" == f"{ONCE} in a {CUT}"
    assert c.over == [(ONCE, False), (f"in a {CUT}", True)]
    c.play(50)  # nothing flushed plays after all
    assert c.heard.text(1, interrupted=True) == said
    assert c.over == [(ONCE, False), (f"in a {CUT}", True)]


def test_a_cut_between_clauses_marks_the_end_of_the_last_one_heard() -> None:
    c = Client()
    c.clause(ONCE, 60)
    c.clause(TOWN, 250)
    c.play(60)  # the next clause's frames are queued, none played
    c.flush()
    assert c.heard.text(1, interrupted=True) == f"{ONCE} {CUT}"
    assert c.over == [(f"{ONCE} {CUT}", True)]


def test_a_clause_already_shown_gets_the_mark_on_its_own() -> None:
    c = Client()
    c.clause(ONCE, 60)
    c.send("reply", text=TOWN, final=False)  # the next clause is announced, its frames late
    c.play(65)
    assert c.over == [(ONCE, False)]  # the first one played out: shown
    c.flush()  # the barge-in comes before any frame of the next
    assert c.over == [(ONCE, False), (CUT, True)]
    assert c.heard.text(1, interrupted=True) == f"{ONCE} {CUT}"


def test_a_false_interruption_cuts_a_clause_and_the_reply_goes_on() -> None:
    c = Client()
    c.clause(ONCE, 60)
    c.clause(TOWN, 250)
    c.play(60 + 25)
    c.flush()
    c.send("resume")
    c.clause(EVERY, 100, last=True)  # RESUME goes on at the next clause: no replay
    c.send("turn", interrupted=False)
    c.play(120)
    assert c.heard.text(1) == f"{ONCE} in a {CUT} {EVERY}"
    assert c.over[-1] == (EVERY, False)


def test_an_interrupted_reply_with_nothing_played_is_only_the_mark() -> None:
    c = Client()
    c.clause(ONCE, 60)
    c.flush()
    assert c.heard.text(1, interrupted=True) == CUT
    assert c.over == []


def test_without_a_speaker_what_arrives_is_what_is_shown() -> None:
    heard = HeardText(plays=False)
    heard.on_event({"type": "reply", "turn": 2, "text": "Hello!", "final": False})
    for _ in range(20):
        heard.frame(2, 0)
    heard.on_event({"type": "reply", "turn": 2, "text": "I'm duplex.", "final": False})
    heard.frame(2, FLAG_LAST)
    assert heard.text(2) == "Hello! I'm duplex."
    assert heard.text(1) == ""  # another turn


def test_heard_words_counts_whole_words_only() -> None:
    assert heard_words("in a small town,", 0, DEFAULT_CPS) == ""
    # 0.5 s at 14 characters a second: 7 characters reach "in a sm": two whole words
    assert heard_words("in a small town,", 25, DEFAULT_CPS) == "in a"
    assert heard_words("in a small town,", 1000, DEFAULT_CPS) == "in a small town,"
