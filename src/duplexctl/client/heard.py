"""What the listener heard of each reply: the clauses whose audio played, cut where it was cut.

The orchestrator sends a `reply` event (final false) for each clause as the clause's first
frame goes out, and the frames follow it in order on the same socket, so the client knows
which clause every frame speaks (`frame()` tags it). The playout side counts the frames of each
clause it actually played (`played()`, or `Clause.played` from the audio thread); a `flush`
(barge-in) drops what is queued. The heard text of a reply (`text()`) is then:

- every clause that nothing cut, whole (its frames played, or are queued and will play);
- the clause a flush cut, up to the words its played frames cover at the voice's pace (measured
  on the clauses heard whole so far; `DEFAULT_CPS` before there is one), then `CUT`; when the
  cut fell between clauses, the last clause heard whole, then `CUT`;
- nothing of a clause none of whose frames played.

The words of a cut clause are an estimate: the worker marks clauses, not words. A reply the
`turn` event calls interrupted always ends with `CUT`.

`LiveConversation` (demo, file mode) also wants each clause once it is over (`settled`): when a
later clause starts playing, when its reply's frames have all played out, or at a flush.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from duplexd.audio.frames import FRAME_MS
from duplexd.orchestrator.protocol import FLAG_LAST

__all__ = ["CUT", "DEFAULT_CPS", "Clause", "HeardText", "heard_words"]

CUT = "⟂"
DEFAULT_CPS = 14.0
"""Characters per second of speech before any clause was heard whole (Piper joe: ~14-15)."""


@dataclass(eq=False)
class Clause:
    """One clause of a reply, as the client received and played it."""

    turn: int
    text: str
    received: int = 0  # frames that arrived
    played: int = 0  # frames that reached the speaker (counted by the playout side)
    complete: bool = False  # all its frames are in: a later clause began, or the reply's last
    cut: bool = False  # a flush ended the reply within or right after this clause
    settled: bool = False  # over: nothing more of it will play
    first_played_ms: float | None = None  # on the conversation's clock, when known
    words: str = ""  # a cut clause: the words heard, estimated when it was cut

    @property
    def heard_whole(self) -> bool:
        return self.played > 0 and self.complete and self.played >= self.received

    def cut_here(self, cps: float) -> None:
        """A flush ended the reply in (or right after) this clause."""
        self.cut = True
        self.words = self.text if self.heard_whole else heard_words(self.text, self.played, cps)

    def shown(self) -> str:
        """Its heard text: whole, or (cut) the words its played audio covered, then `CUT`."""
        return f"{self.words} {CUT}".strip() if self.cut else self.text


def heard_words(text: str, frames: int, cps: float) -> str:
    """The words of `text` that `frames` of its audio cover at `cps` characters a second
    (whole words only: a word counts once the audio reaches its end)."""
    reach = frames * FRAME_MS / 1000 * cps
    kept: list[str] = []
    end = 0
    for word in text.split():
        end += len(word) + (1 if kept else 0)
        if end > reach:
            break
        kept.append(word)
    return " ".join(kept)


class HeardText:
    """Tracks the clauses of every reply of one conversation (see the module docstring).

    Without a speaker (`plays=False`: text printed only) every frame that arrives counts as
    played."""

    def __init__(self, *, plays: bool = True) -> None:
        self.plays = plays
        self.clauses: list[Clause] = []

    @property
    def cps(self) -> float:
        """The voice's pace, characters a second, from the clauses heard whole so far."""
        whole = [c for c in self.clauses if c.heard_whole and not c.cut]
        chars, frames = sum(len(c.text) for c in whole), sum(c.played for c in whole)
        if frames < 25 or not chars:  # half a second at least
            return DEFAULT_CPS
        return chars / (frames * FRAME_MS / 1000)

    # -- what arrives -------------------------------------------------------------------------

    def on_event(self, ev: dict[str, Any]) -> list[Clause]:
        """Follow `reply` (a clause begins), `flush` and `turn`; returns the clauses settled."""
        kind = ev.get("type")
        turn = int(ev.get("turn", -1))
        if kind == "reply" and not ev.get("final"):
            for clause in self._of(turn):
                clause.complete = True
            self.clauses.append(Clause(turn, str(ev.get("text", "")).strip()))
        elif kind == "flush":
            return self.flush(turn)
        elif kind == "turn":
            for clause in self._of(turn):
                clause.complete = True
        return []

    def frame(self, turn: int, flags: int) -> Clause | None:
        """The clause an arriving frame speaks (its tag for the playout buffer)."""
        current = self.clauses[-1] if self.clauses else None
        if current is None or current.turn != turn or current.settled:
            return None  # no clause announced for it: an old server, or after a cut
        current.received += 1
        if flags & FLAG_LAST:
            current.complete = True
        if not self.plays:
            current.played += 1
        return current

    # -- what plays ---------------------------------------------------------------------------

    def played(self, clause: Clause | None, now_ms: float | None = None) -> list[Clause]:
        """A frame of `clause` played (None: silence); returns the clauses that are now over:
        the earlier ones of its reply."""
        if clause is None:
            return []
        clause.played += 1
        if clause.first_played_ms is None:
            clause.first_played_ms = now_ms
        earlier = self._of(clause.turn)
        return self._settle(earlier[: earlier.index(clause)] if clause in earlier else ())

    def drained(self) -> list[Clause]:
        """The playout buffer is empty: clauses with all their frames in are over."""
        return self._settle(c for c in self.clauses if not c.settled and c.complete)

    def flush(self, turn: int) -> list[Clause]:
        """A flush dropped the queued audio of `turn`: the clause playing (or the last one
        played, when the cut fell between clauses) is cut; returns the clauses now over."""
        clauses = self._of(turn)
        heard = [c for c in clauses if c.played]
        if heard:
            heard[-1].cut_here(self.cps)
            return self._settle(clauses)
        settled = self._settle(clauses)  # none of these played
        before = [c for c in self.clauses if c.turn == turn and c.played]
        if not before or before[-1].cut:
            return settled
        # The cut fell after a clause already over (and shown): mark it there, and report the
        # mark on its own (a clause with no words of its own).
        before[-1].cut_here(self.cps)
        return [*settled, Clause(turn, "", cut=True, settled=True)]

    # -- the text -----------------------------------------------------------------------------

    def text(self, turn: int, *, interrupted: bool = False) -> str:
        """What was heard of the reply of `turn` (see the module docstring)."""
        parts = [c.shown() for c in self.clauses if c.turn == turn and self._heard(c)]
        said = " ".join(p for p in parts if p)
        if interrupted and not said.endswith(CUT):
            said = f"{said} {CUT}".strip()
        return said

    def _heard(self, clause: Clause) -> bool:
        # settled unplayed: flushed before a frame of it played; otherwise it will play
        return clause.played > 0 or not clause.settled

    def _of(self, turn: int) -> list[Clause]:
        return [c for c in self.clauses if c.turn == turn and not c.settled]

    def _settle(self, clauses: Iterable[Clause]) -> list[Clause]:
        settled = []
        for clause in clauses:
            if not clause.settled:
                clause.settled = True
                settled.append(clause)
        return settled
