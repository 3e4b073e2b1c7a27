"""The real worker over real gRPC, for the reliability issue: an unbreakable 4,000-character word
(item 9), invalid Control commands and a new call right after a cancel or STOP (item 10)."""

from __future__ import annotations

import grpc
import pytest

from duplexd.devkit.procs import DaemonProc
from duplexd.errors import DuplexError, InvalidArgument, ModelNotFound
from duplexd.rpc import tts_pb2 as pb
from duplexd.rpc.client import SynthesisCall, TTSClient, text_stream

pytestmark = pytest.mark.integration

SENTENCE = "Hello there, this is the duplex worker speaking. It streams twenty millisecond frames."
_MB = 1024 * 1024


@pytest.mark.asyncio
async def test_one_4000_character_word_is_spoken_in_bounded_units_and_memory(
    worker: DaemonProc,
) -> None:
    """Item 9: the word was one unit and Piper took ~1 GB for it, kept by onnxruntime's arena."""
    word = "".join(chr(ord("a") + (i * 7) % 26) for i in range(4000))
    async with TTSClient(worker.addr) as client:
        sid = (await client.start_session()).session_id
        await _collect(client, sid, ["Warm up the buffers of a normal sentence, please."])
        before = (await client.capabilities()).hardware.process_rss_bytes
        frames: list[pb.AudioFrame] = []
        call = client.open_stream(text_stream(sid, [word]))
        async for frame in call:
            frames.append(frame)
            if len(frames) == 25:
                break
        await client.control(sid, pb.STOP)
        call.cancel()
        after = (await client.capabilities()).hardware.process_rss_bytes
        await client.end_session(sid)
    assert 0 < len(frames[0].unit_text) <= 220
    grown_mb = (after - before) / _MB
    print(f"RSS {before / _MB:.0f} MB -> {after / _MB:.0f} MB ({grown_mb:+.0f} MB)")
    assert grown_mb < 150


@pytest.mark.asyncio
async def test_memory_of_long_units_goes_back_after_them(worker: DaemonProc) -> None:
    """The soak's finding: onnxruntime's arena kept the buffers of the longest unit it had
    synthesized (and glibc kept what it freed), so RSS only grew. Units of the largest size the
    chunker makes, one after another: RSS must come back down after them."""
    clauses = [
        "the scheduler keeps a refcount per model and evicts idle ones after a while",
        "in a small town by the sea there lived a lighthouse keeper named Ada",
        "there are a few caveats you should know about before we start",
    ]
    async with TTSClient(worker.addr) as client:
        sid = (await client.start_session()).session_id
        await _collect(client, sid, ["Warm up the buffers of a normal sentence, please."])
        before = (await client.capabilities()).hardware.process_rss_bytes
        for i in range(6):
            text = ", and ".join(clauses[i % 3 :] + clauses[: i % 3])[: 200 + 3 * i] + "."
            call = client.open_stream(text_stream(sid, [text]))
            async for _frame in call:  # the whole unit was synthesized before its first frame
                break
            await client.control(sid, pb.STOP)
            call.cancel()
        after = (await client.capabilities()).hardware.process_rss_bytes
        await client.end_session(sid)
    grown_mb = (after - before) / _MB
    print(f"RSS {before / _MB:.0f} MB -> {after / _MB:.0f} MB ({grown_mb:+.0f} MB)")
    # A bound against runaway growth (the 4,000-character word once took ~1 GB). How much comes
    # back depends on the allocator and the machine's load (+9 MB here, +103 MB once under CI
    # load): the steady-state figure is the soak bench's (docs/benchmarks.md), not a test's.
    assert grown_mb < 200


@pytest.mark.asyncio
async def test_an_invalid_control_command_is_invalid_argument(worker: DaemonProc) -> None:
    """Item 10: it was INTERNAL (Command.Name() raised ValueError on an unknown value)."""
    async with TTSClient(worker.addr) as client:
        sid = (await client.start_session()).session_id
        for command in (99, -1, 2**31 - 1, pb.COMMAND_UNSPECIFIED):
            with pytest.raises(InvalidArgument, match="unknown control command"):
                await client.control(sid, command)
        # the command is checked first: an unknown session does not hide it
        with pytest.raises(InvalidArgument, match="unknown control command"):
            await client.control("no-such-session", 7)
        with pytest.raises(ModelNotFound, match="no session"):
            await client.control("no-such-session", pb.PAUSE)
        assert (await client.control(sid, pb.PAUSE)).detail == "no utterance in progress"
        assert await _collect(client, sid, ["Still fine."])
        await client.end_session(sid)


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["cancel", "stop", "stop-then-cancel"])
async def test_a_new_call_right_after_a_cancelled_one_is_accepted(
    worker: DaemonProc, how: str
) -> None:
    """Item 10: ~4 % of immediate retries after a cancel failed "already speaking" (here 1 in
    100 before the fix, on this machine). Every retry must be accepted."""
    failures: list[str] = []
    stopped: list[SynthesisCall] = []
    async with TTSClient(worker.addr) as client:
        sid = (await client.start_session()).session_id
        for _ in range(40):
            call = client.open_stream(text_stream(sid, [SENTENCE]))
            try:
                got = 0
                async for _frame in call:
                    got += 1
                    if got == 2:
                        break
            except DuplexError as exc:
                failures.append(str(exc))
            if how.startswith("stop"):
                await client.control(sid, pb.STOP)
            if how == "stop":
                stopped.append(call)  # read to its end later: the next call starts at once
            else:
                call.cancel()
        for call in stopped:  # each STOPped stream ends gracefully
            async for _frame in call:
                pass
            assert await call.call.code() == grpc.StatusCode.OK
        await client.end_session(sid)
    assert failures == []


async def _collect(client: TTSClient, sid: str, parts: list[str]) -> list[pb.AudioFrame]:
    return [f async for f in client.synthesize(text_stream(sid, parts))]
