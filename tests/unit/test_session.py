"""A Session in-process, behind its seams: scripted VAD/ASR, a fake worker, a recording transport.

Each case runs in milliseconds of real time: stream time advances with the frames we feed, the
fake worker streams 20 ms frames every 2 ms, and the false-interruption window is 30 ms. The
same behaviour over real processes (gRPC worker, Silero, Whisper) is in the integration tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import pytest
import pytest_asyncio

from duplexd.config import (
    SPEECH_END_LOOKBACK_MS,
    OrchestratorConfig,
    SessionsConfig,
    TurnConfig,
    WorkerEndpoint,
)
from duplexd.devkit.fakes import (
    FakeEndOfTurn,
    FakeTranscriber,
    FakeTTS,
    FakeVAD,
    RecordingTransport,
)
from duplexd.orchestrator.deps import SessionDeps, responders
from duplexd.orchestrator.llm import PushResponder
from duplexd.orchestrator.protocol import Hello, LlmChoice
from duplexd.orchestrator.registry import StaticRegistry
from duplexd.orchestrator.routing import RoutingPolicy
from duplexd.orchestrator.session import Session
from duplexd.orchestrator.telemetry import OrchTelemetry
from duplexd.orchestrator.transport import Outbox
from duplexd.orchestrator.turn import State

pytestmark = [pytest.mark.timeout(10), pytest.mark.asyncio]

FRAME = np.zeros(320, dtype="<i2").tobytes()  # 20 ms of 16 kHz mic audio
LOUD = np.full(320, 6000, dtype="<i2").tobytes()


@dataclass
class Rig:
    session: Session
    vad: FakeVAD
    asr: FakeTranscriber
    workers: list[FakeTTS]
    transport: RecordingTransport
    outbox: Outbox

    def feed(self, ms: int, pcm: bytes = FRAME) -> None:
        for _ in range(ms // 20):
            self.session.on_audio(pcm)

    def feed_until(self, pred: Callable[[], bool], limit_ms: int = 2000) -> None:
        for _ in range(limit_ms // 20):
            if pred():
                return
            self.session.on_audio(FRAME)
        raise AssertionError("condition not reached")

    @property
    def now_ms(self) -> int:
        return self.session.listener.stream_ms

    async def settle(self) -> None:
        """Let the outbox deliver what is queued."""
        for _ in range(5):
            await asyncio.sleep(0)

    async def until(self, pred: Callable[[], bool], timeout_s: float = 3.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not pred():  # noqa: ASYNC110  # polls a condition on a fake, not an event
                await asyncio.sleep(0.001)

    def events(self, kind: str) -> list[dict[str, object]]:
        return self.transport.of(kind)

    async def say_then_pause(self, speech_ms: int, limit_ms: int = 1200) -> None:
        """Speak, then stay silent one frame at a time, letting the end-of-turn model's
        decisions land, until the turn ends (or `limit_ms` of silence)."""
        self.vad.speak(self.now_ms, self.now_ms + speech_ms)
        self.feed(speech_ms)
        for _ in range(limit_ms // 20):
            self.session.on_audio(FRAME)
            await self.settle()
            if self.events("turn") or not self.session.listener.user_speaking:
                break
        await self.until(lambda: bool(self.events("turn")))


Make = Callable[..., Awaitable["Rig"]]


@pytest_asyncio.fixture
async def rig_factory() -> AsyncIterator[Make]:
    made: list[Rig] = []

    async def make(
        *,
        texts: tuple[str, ...] = (),
        workers: int = 1,
        aec: bool = True,
        frames_per_unit: int = 5,
        end_of_turn_ms: int = 100,
        speculate: bool = False,
        model: FakeEndOfTurn | None = None,
        transcript_check: bool = True,
        silence_dbfs: float | None = None,  # the fake VAD's "speech" is FRAME's zeros: none
        push: bool = False,
        keepalive_s: float = 60.0,
        frame_interval_s: float = 0.002,
    ) -> Rig:
        fakes = [FakeTTS(f"w{i}", frames_per_unit=frames_per_unit,
                         frame_interval_s=frame_interval_s) for i in range(workers)]  # fmt: skip
        config = OrchestratorConfig(
            turn=TurnConfig(
                end_of_turn_silence_ms=end_of_turn_ms,
                false_interruption_ms=30,
                speculate=speculate,
                transcript_check=transcript_check,
                silence_dbfs=silence_dbfs,
            ),
            sessions=SessionsConfig(worker_keepalive_s=keepalive_s),
            workers=[WorkerEndpoint(name=f.name, addr=f.addr) for f in fakes],
        )
        by_addr = {f.addr: f for f in fakes}
        registry = StaticRegistry(config.workers, clients=by_addr.__getitem__)
        await registry.refresh()
        vad, asr = FakeVAD(), FakeTranscriber(texts)
        deps = SessionDeps(
            config=config, registry=registry, policy=RoutingPolicy(), telemetry=OrchTelemetry(),
            vad=lambda: vad, transcriber=lambda: asr, responder=responders(config),
            end_of_turn=model,
        )  # fmt: skip
        transport = RecordingTransport()
        outbox = Outbox(transport)
        outbox.start()
        llm = LlmChoice(kind="push") if push else None
        session = Session(deps, Hello(type="hello", aec=aec, llm=llm), outbox)
        await session.start()
        rig = Rig(session, vad, asr, fakes, transport, outbox)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.session.aclose()
        await rig.outbox.aclose()


async def speaking_rig(make: Make, **kw: object) -> Rig:
    """A rig whose bot is audibly replying to a typed turn."""
    rig = await make(**kw)
    rig.session.on_text("tell me something")
    await rig.until(lambda: rig.session.state == State.SPEAKING)
    return rig


async def test_barge_in_pauses_and_flushes_in_the_onsets_loop_turn(rig_factory: Make) -> None:
    rig = await speaking_rig(rig_factory)
    tts = rig.workers[0]
    rig.vad.speak(rig.now_ms, rig.now_ms + 400)
    rig.feed_until(lambda: rig.session.state == State.BARGED_IN)
    # Same loop turn as the onset: muted, client audio flushed (the flush event is queued
    # ahead of anything else), the PAUSE call scheduled.
    reply = rig.session.reply
    assert reply is not None and reply.muted
    assert rig.outbox._audio_count == 0
    assert not tts.commands()
    await asyncio.sleep(0)  # the very next loop step: the PAUSE reaches the worker
    assert tts.commands() == ["PAUSE"]
    await rig.settle()
    assert rig.events("flush")
    sent_at_flush = len(rig.transport.audio)
    await asyncio.sleep(0.02)
    assert len(rig.transport.audio) == sent_at_flush  # not one more frame to the client


async def test_false_interruption_resumes(rig_factory: Make) -> None:
    rig = await speaking_rig(rig_factory, texts=("",))  # a cough: no words
    tts = rig.workers[0]
    rig.vad.speak(rig.now_ms, rig.now_ms + 60)
    rig.feed_until(lambda: rig.session.state == State.BARGED_IN)
    rig.feed(200)  # the cough ends; silence ends the "turn" with no words
    await rig.until(lambda: "RESUME" in tts.commands())
    assert tts.commands() == ["PAUSE", "RESUME"]
    assert rig.session.state == State.SPEAKING
    await rig.settle()
    assert rig.events("resume") and not rig.events("interrupted")
    before = len(rig.transport.audio)
    await rig.until(lambda: len(rig.transport.audio) > before)  # the reply goes on


async def test_confirmed_barge_in_stops_and_the_user_gets_the_floor(rig_factory: Make) -> None:
    rig = await speaking_rig(rig_factory, texts=("wait stop please",))
    tts = rig.workers[0]
    rig.vad.speak(rig.now_ms, rig.now_ms + 300)  # still talking when the 30 ms window ends
    rig.feed_until(lambda: rig.session.state == State.BARGED_IN)
    await rig.until(lambda: "STOP" in tts.commands())
    assert tts.commands() == ["PAUSE", "STOP"]
    assert rig.session.state == State.LISTENING
    rig.feed(500)  # the rest of the user's speech and the silence after it
    await rig.until(lambda: len(rig.events("turn")) >= 2)
    await rig.settle()
    first, second = rig.events("turn")[:2]
    assert first["interrupted"] is True
    transcripts = [e["text"] for e in rig.events("transcript") if e["final"]]
    assert transcripts[-1] == "wait stop please"
    assert "wait stop please" in str(second["reply_text"])


async def test_echo_guarded_onsets_are_ignored(rig_factory: Make) -> None:
    # No client AEC: the bot's loud voice comes back quietly through the mic.
    rig = await speaking_rig(rig_factory, aec=False, frames_per_unit=20)
    tts = rig.workers[0]
    rig.vad.speak(rig.now_ms, rig.now_ms + 200)
    rig.feed(200)  # silent mic frames: far below the expected echo of the bot's voice
    await rig.settle()
    assert rig.session.state == State.SPEAKING
    assert tts.commands() == [] and not rig.events("flush")
    # The same onset, loud enough to be a person over the echo, does barge in.
    rig.vad.speak(rig.now_ms, rig.now_ms + 200)
    for _ in range(10):
        rig.session.on_audio(LOUD)
    assert rig.session.speech.now_state() == State.BARGED_IN  # (mypy narrowed .state above)


async def test_speculative_final_dropped_when_the_user_speaks_again(rig_factory: Make) -> None:
    rig = await rig_factory(texts=("book a table for two people",), end_of_turn_ms=200)
    start = rig.now_ms
    rig.vad.speak(start, start + 400)
    rig.vad.speak(start + 520, start + 800)  # a 120 ms pause: speculate, then speak again
    rig.feed(500)
    assert rig.asr.calls.count("begin_final") == 1  # the pause started the final decode
    rig.feed(360)
    assert "cancel" in rig.asr.calls  # ... and speaking again dropped it
    assert "commit" not in rig.asr.calls
    rig.feed(300)  # the real end of the turn
    await rig.until(lambda: bool(rig.events("turn")))
    assert rig.asr.calls.count("commit") == 1
    assert [e["text"] for e in rig.events("transcript") if e["final"]] == [
        "book a table for two people"
    ]
    latency = rig.events("turn")[0]["latency"]
    assert isinstance(latency, dict) and latency["end_of_speech_ms"] is not None


async def test_worker_death_rebinds_at_the_next_turn(rig_factory: Make) -> None:
    rig = await rig_factory(workers=2)
    session = rig.session
    first = session.tts
    assert first is not None
    dying = next(w for w in rig.workers if w.name == first.worker)
    other = next(w for w in rig.workers if w is not dying)
    dying.die()
    session.on_text("hello")
    await rig.until(lambda: bool(rig.events("worker")))
    await rig.settle()
    errors = rig.events("error")
    assert errors and errors[0]["code"] == "unavailable"
    assert rig.events("worker")[0]["worker"] == other.name
    session.on_text("are you there")
    await rig.until(lambda: len(rig.events("turn")) >= 2)
    assert session.tts is not None and session.tts.worker == other.name
    assert other.frames_sent > 0


# -- semantic end of turn and speculative replies (issue 17) ---------------------------------


async def test_speculative_reply_is_held_until_the_turn_is_confirmed(rig_factory: Make) -> None:
    rig = await rig_factory(texts=("what time is it",), speculate=True, end_of_turn_ms=300)
    tts = rig.workers[0]
    start = rig.now_ms
    rig.vad.speak(start, start + 400)
    rig.feed(500)  # 100 ms of pause: the speculative reply starts
    await rig.until(lambda: tts.frames_sent > 0)  # the worker is already speaking it ...
    await rig.settle()
    assert rig.transport.audio == [] and not rig.events("reply")  # ... but nothing is heard
    rig.feed(240)  # 300 ms of silence: the turn is confirmed
    await rig.until(lambda: bool(rig.events("turn")))
    await rig.settle()
    latency = rig.events("latency")[0]
    assert latency["speculative"] is True and latency["end_of_turn"] == "silence"
    assert latency["speculations_discarded"] == 0
    # where it stood: started at the pause, its audio ready (held) before the turn ended
    started, ready = latency["speculation_started_ms"], latency["speculation_ready_ms"]
    assert isinstance(started, float) and isinstance(ready, float)
    assert 0 <= started <= ready <= cast(float, latency["end_of_speech_ms"])
    assert rig.transport.audio and len(tts.streams) == 1  # the held stream, not a second one
    assert [m.content for m in rig.session.history][:1] == ["what time is it"]


async def test_speculation_is_dropped_when_the_user_goes_on(rig_factory: Make) -> None:
    rig = await rig_factory(
        texts=("I'd like to book a table for two people",), speculate=True, end_of_turn_ms=400
    )
    tts = rig.workers[0]
    rig.asr.texts.insert(0, "I'd like to book a table for")  # what the pause decodes to
    start = rig.now_ms
    rig.vad.speak(start, start + 400)
    rig.vad.speak(start + 700, start + 1000)  # a 300 ms mid-sentence pause
    rig.feed(600)
    await rig.until(lambda: tts.frames_sent > 0)  # speculating on the unfinished sentence
    rig.asr.texts.pop(0)  # the user goes on: the full sentence is what gets committed
    rig.feed(200)
    await rig.until(lambda: "STOP" in tts.commands())  # the speculative synthesis is stopped
    assert rig.transport.audio == []
    rig.feed(700)  # the rest of the sentence and 400 ms of silence after it
    await rig.until(lambda: bool(rig.events("turn")))
    await rig.settle()
    latency = rig.events("latency")[0]
    assert latency["speculations_discarded"] == 1 and latency["speculative"] is False
    users = [m.content for m in rig.session.history if m.role == "user"]
    assert users == ["I'd like to book a table for two people"]
    assert "two people" in str(rig.events("turn")[0]["reply_text"])


async def test_the_model_ends_the_turn_early_or_keeps_listening(rig_factory: Make) -> None:
    model = FakeEndOfTurn([False, True])  # "not done" at 64 ms, "complete" at 164 ms
    rig = await rig_factory(texts=("Hello there.",), speculate=True, model=model)
    await rig.say_then_pause(300)
    await rig.settle()
    assert len(model.asked_ms) == 2  # asked, told "not done", asked again reask_ms later
    latency = rig.events("latency")[0]
    assert latency["end_of_turn"] == "model" and latency["eot_model_ms"] == 1.0
    assert latency["speculations_discarded"] == 1  # "not done" dropped the first speculation
    end_of_speech = latency["end_of_speech_ms"]
    assert isinstance(end_of_speech, float) and end_of_speech < 900  # before max silence


async def test_a_complete_at_the_pause_ends_the_turn_at_the_minimum_silence(
    rig_factory: Make,
) -> None:
    model = FakeEndOfTurn([True])
    rig = await rig_factory(texts=("Hello there.",), speculate=True, model=model)
    spoken_end = rig.now_ms + 300
    await rig.say_then_pause(300)
    turn = rig.session.cfg.turn
    asked_at = model.asked_ms[0] - 300  # the question's audio: the speech, then its silence
    assert len(model.asked_ms) == 1 and asked_at < turn.smart_turn_min_silence_ms
    silence = rig.now_ms - spoken_end  # the turn ended on the first frame past the minimum
    assert turn.smart_turn_min_silence_ms <= silence < turn.smart_turn_min_silence_ms + 40
    latency = rig.events("latency")[0]
    assert latency["end_of_turn"] == "model" and latency["speculative"] is True


@pytest.mark.parametrize("check", [True, False])
async def test_a_complete_that_stops_mid_sentence_keeps_listening(
    rig_factory: Make, check: bool
) -> None:
    model = FakeEndOfTurn([True, True, True, True])  # the model always hears a finished voice
    rig = await rig_factory(texts=("I'd like to book a table for.",), speculate=True,
                            model=model, transcript_check=check)  # fmt: skip
    await rig.say_then_pause(300)
    latency = rig.events("latency")[0]
    overruled = rig.session.deps.telemetry.c_eot.labels("overruled")._value.get()
    if check:  # each "complete" overruled by the transcript: the maximum silence ends it
        assert latency["end_of_turn"] == "max_silence" and len(model.asked_ms) >= 2
        assert overruled == len(model.asked_ms)
        assert latency["speculative"] is True  # the held reply is still the answer
    else:
        assert latency["end_of_turn"] == "model" and len(model.asked_ms) == 1
        assert overruled == 0


@pytest.mark.parametrize(("last_p", "guessed"), [(0.4, True), (0.95, False)])
async def test_a_word_whisper_guessed_at_the_end_does_not_finish_the_sentence(
    rig_factory: Make, last_p: float, guessed: bool
) -> None:
    # "I'd like to book a table for" + a pause: Whisper hears "… for two.", unsure of "two"
    model = FakeEndOfTurn([True, True, True, True])
    rig = await rig_factory(texts=("I'd like to book a table for two.",), speculate=True,
                            model=model)  # fmt: skip
    rig.asr.word_p = (0.9, 0.99, 0.98, 0.99, 0.98, 0.98, 0.94, last_p)
    await rig.say_then_pause(300)
    latency = rig.events("latency")[0]
    overruled = rig.session.deps.telemetry.c_eot.labels("overruled")._value.get()
    if guessed:  # "… a table for" may be all that was said: listen on, to the maximum silence
        assert latency["end_of_turn"] == "max_silence" and overruled == len(model.asked_ms)
    else:  # a sure "two": the sentence is whole, and ends at the first complete
        assert latency["end_of_turn"] == "model" and overruled == 0


@pytest.mark.parametrize("last_p", [0.5, 0.95])
async def test_a_complete_on_an_unsure_last_word_waits_for_the_silence_rule(
    rig_factory: Make, last_p: float
) -> None:
    # "Tell me a" + a pause: Whisper hears "Tell me that." (whole, so not overruled), unsure of
    # "that". The pause may go on: the turn ends no sooner than the silence rule would end it
    model = FakeEndOfTurn([True])
    rig = await rig_factory(texts=("Tell me that.",), speculate=True, model=model,
                            end_of_turn_ms=500)  # fmt: skip
    rig.asr.word_p = (0.98, 0.97, last_p)
    spoken_end = rig.now_ms + 300
    await rig.say_then_pause(300)
    turn = rig.session.cfg.turn
    silence = rig.now_ms - spoken_end  # the turn ended on the first frame past its floor
    latency = rig.events("latency")[0]
    unsure = rig.session.deps.telemetry.c_eot.labels("unsure")._value.get()
    assert len(model.asked_ms) == 1 and latency["speculative"] is True
    if last_p < turn.unsure_word_p:
        assert latency["end_of_turn"] == "unsure_ending" and unsure == 1
        assert turn.end_of_turn_silence_ms <= silence < turn.end_of_turn_silence_ms + 40
    else:  # a sure last word: the floor, as before
        assert latency["end_of_turn"] == "model" and unsure == 0
        assert turn.smart_turn_min_silence_ms <= silence < turn.smart_turn_min_silence_ms + 40


@pytest.mark.parametrize(("text", "by"), [("my favorite colors", "unsure_ending"),
                                          ("My favorite colors.", "model")])  # fmt: skip
async def test_a_complete_on_a_transcript_that_trails_off_waits_for_the_silence_rule(
    rig_factory: Make, text: str, by: str
) -> None:
    # "My favourite colour is" + a pause: Whisper drops the "is" but writes no full stop
    model = FakeEndOfTurn([True])
    rig = await rig_factory(texts=(text,), speculate=True, model=model, end_of_turn_ms=500)
    spoken_end = rig.now_ms + 300
    await rig.say_then_pause(300)
    silence = rig.now_ms - spoken_end
    turn = rig.session.cfg.turn
    assert rig.events("latency")[0]["end_of_turn"] == by
    floor = turn.end_of_turn_silence_ms if by == "unsure_ending" else turn.smart_turn_min_silence_ms
    assert floor <= silence < floor + 40


@pytest.mark.parametrize(
    ("endings", "by"),
    [(("the train to London leaves at",), "unsure_ending"),
     (("the train to London leaves him",), "model")],  # a reading that is whole: no matter
)  # fmt: skip
async def test_a_complete_whose_last_word_nearly_read_as_unfinished_waits_for_the_silence_rule(
    rig_factory: Make, endings: tuple[str, ...], by: str
) -> None:
    # "The train to London leaves at" + a pause: Whisper writes "… leaves it." (0.83), " at"
    # close behind it: that reading stops mid-sentence, so the pause may go on
    model = FakeEndOfTurn([True])
    rig = await rig_factory(texts=("the train to London leaves it.",), speculate=True,
                            model=model, end_of_turn_ms=500)  # fmt: skip
    rig.asr.word_p, rig.asr.endings = (0.95, 0.98, 0.97, 0.99, 0.96, 0.83), endings
    await rig.say_then_pause(300)
    assert rig.events("latency")[0]["end_of_turn"] == by


async def test_speech_resumed_inside_an_unsure_words_wait_goes_on_with_the_turn(
    rig_factory: Make,
) -> None:
    # the bench's 400 ms mid-sentence pause: "Tell me a … joke." must not be answered at
    # "Tell me that." (a complete at the pause, on an unsure last word)
    model = FakeEndOfTurn([True, True])
    rig = await rig_factory(texts=("Tell me that.",), speculate=True, model=model,
                            end_of_turn_ms=500)  # fmt: skip
    rig.asr.word_p = (0.98, 0.97, 0.5)
    start = rig.now_ms
    rig.vad.speak(start, start + 300)
    rig.vad.speak(start + 700, start + 1100)  # on again after 400 ms
    for _ in range(700 // 20):
        rig.session.on_audio(FRAME)
        await rig.settle()
    assert rig.session.listener.user_speaking and rig.events("turn") == []
    assert len(model.asked_ms) == 1  # asked at the pause, answered complete: held, not ended
    await rig.say_then_pause(400)
    latency = rig.events("latency")
    assert len(latency) == 1 and latency[0]["speculations_discarded"] == 1


@pytest.mark.parametrize("fade_frames", [0, 3, 8])
async def test_the_silence_counts_from_where_the_voice_faded_out(
    rig_factory: Make, fade_frames: int
) -> None:
    # Silero still says "speech" for a few frames after a voice fades out: those quiet frames
    # are silence already (up to SPEECH_END_LOOKBACK_MS), and the silence rule counts them
    rig = await rig_factory(texts=("hello there",), end_of_turn_ms=300, silence_dbfs=-50.0)
    start = rig.now_ms
    speech_ms = 300 + fade_frames * 20
    rig.vad.speak(start, start + speech_ms)
    rig.feed(300, LOUD)
    rig.feed(fade_frames * 20, FRAME)  # faded out, still "speech" to the VAD
    quiet_ms = min(fade_frames * 20, SPEECH_END_LOOKBACK_MS)
    rig.feed_until(lambda: not rig.session.listener.user_speaking)
    silence = rig.now_ms - (start + speech_ms)  # after the VAD's last "speech"
    assert silence == 300 - quiet_ms  # the turn ended on the frame its silence reached 300 ms
    await rig.until(lambda: bool(rig.events("latency")))


# -- typed text over a speaking reply (reliability issue, item 3) ------------------------------


@pytest.mark.parametrize("after_frames", [1, 3, 6])
async def test_text_over_a_speaking_reply_is_answered_as_the_question(
    rig_factory: Make, after_frames: int
) -> None:
    rig = await speaking_rig(rig_factory, frames_per_unit=4)
    first = rig.session.reply
    assert first is not None
    # interrupt at several points of the reply: at its first frame, a few units in, later
    await rig.until(lambda: len(rig.transport.audio) >= after_frames)
    rig.session.on_text("what is the weather like")
    await rig.until(lambda: len(rig.events("turn")) >= 2)
    await rig.settle()
    first_turn, second_turn = rig.events("turn")[:2]
    assert first_turn["interrupted"] is True
    # answered as the question: not "You said: <the bot's own interrupted words>"
    assert str(second_turn["reply_text"]).startswith("I can't check the weather"), second_turn
    roles = [(m.role, m.content) for m in rig.session.history]
    assert roles[0] == ("user", "tell me something")
    assert roles[1][0] == "assistant" and roles[1][1] == first_turn["reply_text"]
    assert roles[2] == ("user", "what is the weather like")
    assert roles[3][0] == "assistant" and roles[3][1].startswith("I can't check the weather")


async def test_two_texts_over_a_reply_are_each_answered_in_order(rig_factory: Make) -> None:
    rig = await speaking_rig(rig_factory, frames_per_unit=4)
    rig.session.on_text("what is the weather like")
    rig.session.on_text("thank you")
    await rig.until(lambda: len(rig.events("turn")) >= 3)
    await rig.settle()
    users = [m.content for m in rig.session.history if m.role == "user"]
    assert users == ["tell me something", "what is the weather like", "thank you"]
    replies = [str(t["reply_text"]) for t in rig.events("turn")[:3]]
    # each question gets its own answer; an answer may be cut short by the next question
    assert replies[2] == "You're welcome!"
    for i, message in enumerate(rig.session.history):  # every answer follows its question
        if message.role == "assistant":
            assert rig.session.history[i - 1].role == "user"


# -- a worker that lost the session (reliability issue, item 2) --------------------------------


async def test_worker_restart_between_turns_rebinds_and_answers_the_same_turn(
    rig_factory: Make,
) -> None:
    rig = await rig_factory()
    session, tts = rig.session, rig.workers[0]
    session.on_text("hello")
    await rig.until(lambda: len(rig.events("turn")) == 1)
    tts.restart()  # between turns: the worker forgot every session (or ended ours as idle)
    session.on_text("what is the weather like")
    await rig.until(lambda: len(rig.events("turn")) == 2)
    await rig.settle()
    second = rig.events("turn")[1]
    assert str(second["reply_text"]).startswith("I can't check the weather")  # the same turn
    assert not rig.events("error")  # recovered before anything was lost: nothing to report
    assert not rig.events("worker")  # same worker, same model: nothing moved
    assert [w.name for w in session.deps.registry.healthy()] == ["w0"]  # not blamed
    assert tts.sessions == [tts.sessions[0]] * 2 and tts.live == {tts.sessions[0]}
    session.on_text("thank you")  # and the turns after it work as before
    await rig.until(lambda: len(rig.events("turn")) == 3)
    assert rig.events("turn")[2]["reply_text"] == "You're welcome!"


async def test_a_lost_session_that_stays_lost_is_reported_and_the_next_turn_works(
    rig_factory: Make,
) -> None:
    rig = await rig_factory()
    session, tts = rig.session, rig.workers[0]
    tts.restart()
    real_start = tts.start_session

    async def start_and_forget(*args: object, **kw: str) -> object:
        resp = await real_start(*args, **kw)  # type: ignore[arg-type]
        tts.live.clear()  # the new session is gone again before it is used
        return resp

    tts.start_session = start_and_forget  # type: ignore[method-assign,assignment]
    session.on_text("hello")
    await rig.until(lambda: len(rig.events("turn")) == 1)
    await rig.settle()
    assert [e["code"] for e in rig.events("error")] == ["not_found"]  # tried twice, then said
    assert not rig.events("worker")  # a new session on the same worker: nothing moved
    tts.start_session = real_start  # type: ignore[method-assign]
    session.on_text("hello again")
    await rig.until(lambda: len(rig.events("turn")) == 2)
    assert str(rig.events("turn")[1]["reply_text"]).startswith("Hello!")


async def test_pushed_reply_survives_a_worker_restart_word_for_word(rig_factory: Make) -> None:
    rig = await rig_factory(push=True, frames_per_unit=1)
    session, tts = rig.session, rig.workers[0]
    tts.restart()
    words = [f"word{i} " for i in range(12)]
    for w in words:
        session.on_llm(w, False)
    session.on_llm("", True)
    await rig.until(lambda: len(rig.events("turn")) == 1)
    await rig.settle()
    assert rig.events("turn")[0]["reply_text"] == " ".join(w.strip() for w in words)
    assert not rig.events("error")


async def test_keepalive_keeps_the_worker_session_and_restores_a_lost_one(
    rig_factory: Make,
) -> None:
    rig = await rig_factory(keepalive_s=0.02)
    tts = rig.workers[0]
    sid = tts.sessions[0]
    await rig.until(lambda: len(tts.sessions) >= 3)  # re-attached, same id: the worker's touch
    assert set(tts.sessions) == {sid}
    tts.restart()
    await rig.until(lambda: sid in tts.live)  # a restarted worker gets it back before a turn
    rig.session.on_text("hello")
    await rig.until(lambda: bool(rig.events("turn")))
    assert not rig.events("error") and tts.streams and len(tts.streams) == 1  # no retry needed


# -- push mode: bounded, lossless (reliability issue, item 5) ----------------------------------


async def test_pushed_replies_in_a_burst_are_all_spoken(rig_factory: Make) -> None:
    rig = await rig_factory(push=True, frames_per_unit=5)
    sent: list[list[str]] = []
    for r in range(3):  # three replies, each pushed while the one before is still speaking
        words = [f"r{r}w{i}" for i in range(10)]
        sent.append(words)
        for w in words:
            rig.session.on_llm(w + " ", False)
            await asyncio.sleep(0.003)
        rig.session.on_llm("", True)
    await rig.until(lambda: len(rig.events("turn")) >= 3)
    await rig.settle()
    assert [str(t["reply_text"]).split() for t in rig.events("turn")] == sent
    assert not rig.events("error")


async def test_a_2000_message_push_burst_is_spoken_in_full_in_order(rig_factory: Make) -> None:
    rig = await rig_factory(push=True, frames_per_unit=1, frame_interval_s=0.0)
    push = rig.session.responder
    assert isinstance(push, PushResponder)
    words = [f"w{i}" for i in range(2000)]  # ~12 000 characters: more than one utterance takes
    for w in words:
        rig.session.on_llm(w + " ", False)
    rig.session.on_llm("", True)
    await rig.until(lambda: not push.pending and rig.session._last_run is None, timeout_s=8)
    await rig.settle()
    heard = " ".join(str(t["reply_text"]) for t in rig.events("turn")).split()
    assert heard == words
    assert not rig.events("error")
    assert all(len(t) <= 4000 for t in rig.workers[0].texts)


async def test_push_beyond_the_bound_is_refused_with_an_error_not_dropped(
    rig_factory: Make,
) -> None:
    rig = await rig_factory(push=True, frames_per_unit=1)
    push = rig.session.responder
    assert isinstance(push, PushResponder)
    push.max_pending_chars = 4000
    piece = "x" * 999 + " "
    for _ in range(5):  # the first four fit (4000), the fifth does not
        rig.session.on_llm(piece, False)
    rig.session.on_llm("", True)  # nor the final, past the bound by one
    await rig.settle()
    errors = rig.events("error")
    assert [e["code"] for e in errors] == ["resource_exhausted"] * 2
    assert "push_max_pending_chars" in str(errors[0]["message"])
    rig.session.on_llm("", True)  # room again once the speech has caught up
    await rig.until(lambda: bool(rig.events("turn")))
    assert len(str(rig.events("turn")[0]["reply_text"])) == 4 * 999 + 3


async def test_barge_in_drops_the_rest_of_an_interrupted_pushed_reply(rig_factory: Make) -> None:
    rig = await rig_factory(push=True, frames_per_unit=5, texts=("stop",))
    for i in range(20):
        rig.session.on_llm(f"old{i} ", False)
    rig.session.on_llm("", True)
    await rig.until(lambda: rig.session.state == State.SPEAKING)
    rig.vad.speak(rig.now_ms, rig.now_ms + 300)
    rig.feed_until(lambda: rig.session.state == State.BARGED_IN)
    await rig.until(lambda: bool(rig.events("interrupted")))
    rig.feed(500)
    await rig.until(lambda: len(rig.events("turn")) == 1)
    rig.session.on_llm("new reply", True)
    await rig.until(lambda: len(rig.events("turn")) == 2)
    assert rig.events("turn")[1]["reply_text"] == "new reply"
