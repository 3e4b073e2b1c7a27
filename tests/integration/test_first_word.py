"""The first word of an utterance survives the streaming path: real orchestrator and worker,
real Silero VAD and Whisper, speech sent over the WebSocket in real time.

The VAD dates speech from the first 32 ms window it is sure of, after the word has begun; the
listener hands the transcriber its pre-roll from `PREROLL_PAD_MS` before that. Without the pad,
the first 40 ms of espeak's "Fine, thanks for asking." are lost, and Whisper hears
"I thank for asking." (tests/unit/test_preroll.py shows the cut on the VAD alone).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from duplexctl.client.ws import LiveConversation, VoiceClient
from duplexd.audio.pcm import Int16Array
from duplexd.devkit.procs import DaemonProc, daemon
from duplexd.devkit.speech import concat, piper_speech, silence, speech

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    tmp = tmp_path_factory.mktemp("stack")
    with daemon("worker", tmp) as worker:  # noqa: SIM117  # the second needs the first's addr
        with daemon("orchestrator", tmp, ["--worker", f"w0={worker.addr}"]) as orch:
            yield orch


async def _final_transcript(addr: str, lead_ms: int, pcm: Int16Array) -> str:
    async def script(conv: LiveConversation) -> None:
        conv.say(concat(silence(lead_ms), pcm, silence(300)))
        await conv.wait_for(lambda e: e["type"] == "transcript" and e["final"], 30)

    async with VoiceClient(addr, {}) as client:
        conv = await LiveConversation(client).run(script)
    return str(next(e for e in conv.of_type("transcript") if e["final"])["text"])


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("voice", "text", "lead_ms"),
    [
        ("espeak", "Fine, thanks for asking.", 340),  # a fricative onset, mid-stream
        ("espeak", "Hello there, how are you today?", 0),  # from the stream's first frame (demo)
        ("piper", "Fine, thanks for asking.", 1000),  # a natural voice, after a second
    ],
)
async def test_the_first_word_reaches_the_transcript(
    stack: DaemonProc, voice: str, text: str, lead_ms: int
) -> None:
    pcm = speech(text) if voice == "espeak" else piper_speech(text)
    heard = await _final_transcript(stack.addr, lead_ms, pcm)
    first = text.split(maxsplit=1)[0].strip(",.").lower()
    assert heard.lower().startswith(first), (text, heard)
