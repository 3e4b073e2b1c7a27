"""The demo's scripted user: four things said by an espeak-ng voice, one of them over the bot.

The user reacts to the bot rather than following a fixed timeline: it waits for each reply
to finish, and interrupts the story two seconds after its first audio, so the demo shows the
same barge-in on a fast machine and a slow one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from duplexctl.client.ws import LiveConversation
from duplexd.devkit.speech import speech

__all__ = ["USER_VOICE", "UserLine", "demo_script", "lines"]

USER_VOICE = "en-us"  # espeak-ng: not the bot's voice (Piper joe), not one Whisper was tuned on
# Lines Whisper tiny.en hears right in this voice. Not "Hello there!" alone: tiny.en reads
# espeak's two words as "Hello, Naira." (the standard decode) or "The low air." (short form),
# from the whole clip as from the stream.


@dataclass(frozen=True)
class UserLine:
    text: str
    barge_in_after_ms: int | None = None  # speak over the previous reply after this much audio


def lines() -> list[UserLine]:
    return [
        UserLine("Hello there, how are you?"),
        UserLine("Please tell me a story."),
        UserLine("Wait, what time is it?", barge_in_after_ms=2000),
        UserLine("Thank you, goodbye."),
    ]


def _is(kind: str, turn: int) -> Any:
    return lambda ev: ev["type"] == kind and ev.get("turn") == turn


async def demo_script(conv: LiveConversation, *, timeout_s: float = 45.0) -> None:
    script = lines()
    for i, line in enumerate(script):
        if line.barge_in_after_ms is not None:
            await conv.wait_for(_is("latency", i), timeout_s)  # the reply we talk over started
            await conv.sleep_ms(line.barge_in_after_ms)
        conv.say(speech(line.text, voice=USER_VOICE, words_per_minute=160))
        await conv.said()
        following = script[i + 1] if i + 1 < len(script) else None
        if following is not None and following.barge_in_after_ms is not None:
            continue  # the next line talks over this reply: don't wait for it to end
        await conv.wait_for(_is("turn", i + 1), timeout_s)
        await conv.sleep_ms(500)
