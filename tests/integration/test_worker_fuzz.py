"""A seeded fuzz of the worker's gRPC edge: a few hundred malformed or hostile calls, eight at a
time, against one real worker, while a bystander session speaks a whole sentence undisturbed.

What is thrown at it: huge texts (one chunk or many), TextChunks whose strings are not UTF-8
(lone surrogates, cut multi-byte characters; sent as raw bytes, which no client library would),
wrong, empty and changing session ids, Control commands out of range, random Unicode text
(controls, NUL, combining marks, RTL, emoji, CJK, words of hundreds of letters), and cancels at
random moments immediately followed by the next call on the same session.

What must hold: every call ends with the status its input deserves (never INTERNAL, UNKNOWN, or
"already speaking" after a cancel), no call hangs, the bystander's audio is complete and in
order, and the worker serves normally afterwards with no traceback in its log. The seed is
fixed: a failure replays exactly (`FUZZ_SEED=N` tries another).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
from grpc import aio

from duplexd.devkit.procs import DaemonProc
from duplexd.errors import DuplexError
from duplexd.rpc import tts_pb2 as pb
from duplexd.rpc.client import TTSClient, text_stream

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("FUZZ_SEED", "20241204"))
CASES = 320
SLOTS = 8  # cases running at once, each slot with its own session
MAX_FRAMES = 4  # a call that speaks is cancelled after this many frames: seconds, not minutes
CASE_TIMEOUT_S = 30.0
SENTENCE = "Hello there, this is the duplex worker speaking. It streams twenty millisecond frames."
MAX_TEXT = 4000  # worker.max_text_chars

_ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ .,;:!?'\"-()",
    " \t\n\r\u2028\u2029\x0b\x0c",
    "\x00\x01\x07\x1b\x7f",  # controls, NUL included
    "e\u0301a\u0308o\u0303\u200b\u200d\ufeff",  # combining marks, zero-width
    "שלום مرحبا",  # RTL
    "こんにちは。今日は、いい天気ですね！",
    "\U0001f600\U0001f44d\U0001f3fd\u2764\ufe0f",  # emoji, a skin tone, a variation selector
    "3.14 1,000 e.g. Dr. U.S. https://example.com/a?b=c",
]


@dataclass
class Result:
    kind: str
    code: str  # a grpc.StatusCode name, or OK / CANCELLED_BY_US
    detail: str = ""


def _code(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, aio.AioRpcError):
        return exc.code().name, exc.details() or ""
    if isinstance(exc, DuplexError):
        return exc.status, str(exc)
    raise exc


# -- raw protobuf, for what the generated classes refuse to build --------------------------------


def _field(number: int, data: bytes) -> bytes:
    size, varint = len(data), b""
    while True:
        byte, size = size & 0x7F, size >> 7
        varint += bytes([byte | (0x80 if size else 0)])
        if not size:
            break
    return bytes([(number << 3) | 2]) + varint + data


def _raw_chunk(session_id: bytes, text: bytes, final: bool) -> bytes:
    return _field(1, session_id) + _field(2, text) + (b"\x18\x01" if final else b"")


_BAD_UTF8 = [
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xc3",
    b"\xe2\x82",
    b"\xff",
    b"\xc0\xaf",
    b"\xf8\x88",
]


# -- the cases -------------------------------------------------------------------------------


@dataclass
class Slot:
    client: TTSClient
    raw: aio.Channel
    session_id: str


def _random_text(rng: random.Random, limit: int) -> str:
    parts = []
    for _ in range(rng.randint(1, 12)):
        alphabet = rng.choice(_ALPHABETS)
        if rng.random() < 0.1:  # a "word" of hundreds of letters
            parts.append("".join(rng.choice("abcdefgh") for _ in range(rng.randint(200, 900))))
        else:
            parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))))
    return "".join(parts)[:limit]


def _splits(rng: random.Random, text: str) -> list[str]:
    cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 6))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


async def _speak(call: aio.StreamStreamCall[pb.TextChunk, pb.AudioFrame], limit: int) -> str:
    """Read up to `limit` frames; then cancel. 'OK' when it ended by itself."""
    got = 0
    async for _frame in call:
        got += 1
        if got >= limit:
            call.cancel()
            return "CANCELLED_BY_US"
    return "OK"


async def case_huge(rng: random.Random, slot: Slot) -> Result:
    text = _random_text(rng, 10**9)
    text = (text * (MAX_TEXT // max(len(text), 1) + 2))[: rng.randint(MAX_TEXT + 1, 120_000)]
    pieces = _splits(rng, text) if rng.random() < 0.5 else [text]
    kind = "huge_one" if len(pieces) == 1 else "huge_split"
    call = slot.client.synthesize_call(text_stream(slot.session_id, pieces))
    try:
        return Result(kind, await _speak(call, MAX_FRAMES))
    except aio.AioRpcError as exc:
        return Result(kind, *_code(exc))


async def case_bad_utf8(rng: random.Random, slot: Slot) -> Result:
    bad = rng.choice(_BAD_UTF8)
    sid = slot.session_id.encode()
    text = rng.choice(["Hi ", "Hello there, ", ""]).encode()
    where = rng.choice(["text", "session_id", "later"])
    if where == "text":
        chunks = [_raw_chunk(sid, text + bad + b" more", True)]
    elif where == "session_id":
        chunks = [_raw_chunk(sid[:3] + bad, text, True)]
    else:
        chunks = [_raw_chunk(sid, text, False), _raw_chunk(sid, bad, True)]
    method = slot.raw.stream_stream(
        "/duplex.tts.v1.TTS/Synthesize",
        request_serializer=lambda b: b,
        response_deserializer=pb.AudioFrame.FromString,
    )
    call = method(iter(chunks))
    try:
        return Result(f"bad_utf8_{where}", await _speak(call, 10_000))  # type: ignore[arg-type]
    except aio.AioRpcError as exc:
        return Result(f"bad_utf8_{where}", *_code(exc))


async def case_wrong_session(rng: random.Random, slot: Slot) -> Result:
    how = rng.choice(["unknown", "empty", "switch"])
    if how == "unknown":
        chunks = [
            pb.TextChunk(session_id=f"nope-{rng.getrandbits(40):x}", text="Hi.", is_final=True)
        ]
    elif how == "empty":
        chunks = [pb.TextChunk(session_id="", text="Hi.", is_final=True)]
    else:  # the first chunk makes no unit yet; the second names another session
        chunks = [
            pb.TextChunk(session_id=slot.session_id, text="and then"),
            pb.TextChunk(session_id=f"other-{rng.getrandbits(20):x}", text=" more.", is_final=True),
        ]
    call = slot.client.synthesize_call(chunks)
    try:
        return Result(f"session_{how}", await _speak(call, MAX_FRAMES))
    except aio.AioRpcError as exc:
        return Result(f"session_{how}", *_code(exc))


async def case_control(rng: random.Random, slot: Slot) -> Result:
    command = (
        rng.randint(-3, 8)
        if rng.random() < 0.5
        else rng.choice([rng.randint(-(2**31), 2**31 - 1), 2**31 - 1, -(2**31)])
    )
    if command == pb.RELOAD and rng.random() < 0.8:
        command = pb.PAUSE  # a reload re-reads the catalog: a few are plenty
    which = rng.choice(["own", "unknown", "empty"])
    sid = {"own": slot.session_id, "unknown": "no-such-session", "empty": ""}[which]
    valid = command in (pb.PAUSE, pb.RESUME, pb.STOP, pb.RELOAD)
    kind = (
        f"control_{'valid' if valid else 'invalid'}_{which if command != pb.RELOAD else 'reload'}"
    )
    try:
        await slot.client.control(sid, command)
        return Result(kind, "OK")
    except DuplexError as exc:
        return Result(kind, *_code(exc))


async def case_cancel_and_retry(rng: random.Random, slot: Slot) -> Result:
    """Cancel at a random moment, then at once speak again on the same session."""
    call = slot.client.synthesize_call(text_stream(slot.session_id, [rng.choice(_PHRASES)]))
    after = rng.choice(["frames", "delay", "stop"])
    try:
        if after == "frames":
            await _speak(call, rng.randint(1, 3))
        elif after == "delay":
            await asyncio.sleep(rng.random() * 0.05)
        else:
            await _speak(call, 1)
            await slot.client.control(slot.session_id, pb.STOP)
    except aio.AioRpcError as exc:
        return Result(f"cancel_{after}", *_code(exc))
    call.cancel()
    retry = slot.client.synthesize_call(text_stream(slot.session_id, ["Again."]))
    try:
        return Result(f"cancel_{after}_retry", await _speak(retry, 1))
    except aio.AioRpcError as exc:
        return Result(f"cancel_{after}_retry", *_code(exc))


async def case_random_text(rng: random.Random, slot: Slot) -> Result:
    text = _random_text(rng, MAX_TEXT)
    pieces = _splits(rng, text)
    final = rng.random() < 0.8
    chunks = [pb.TextChunk(session_id=slot.session_id, text=p) for p in pieces]
    if final:
        chunks.append(pb.TextChunk(session_id=slot.session_id, is_final=True))
    if rng.random() < 0.2:  # and more after the end
        chunks.append(pb.TextChunk(session_id=slot.session_id, text="after the end"))
    call = slot.client.synthesize_call(chunks)
    try:
        return Result("random_text", await _speak(call, MAX_FRAMES))
    except aio.AioRpcError as exc:
        return Result("random_text", *_code(exc))


_PHRASES = ["Sure.", "Okay, one moment.", "Hello there, friend.", "Yes. No. Maybe."]

Case = Callable[[random.Random, Slot], Awaitable[Result]]
_CASES: list[tuple[Case, int]] = [
    (case_huge, 2),
    (case_bad_utf8, 3),
    (case_wrong_session, 3),
    (case_control, 4),
    (case_cancel_and_retry, 4),
    (case_random_text, 3),
]

# What each kind of input must get. CANCELLED_BY_US: it spoke, and we cut it short.
EXPECTED: dict[str, set[str]] = {
    "huge_one": {"INVALID_ARGUMENT"},
    # streamed text is spoken as it comes: the first pieces may speak before the total is
    # over the limit (the worker cannot know the total in advance)
    "huge_split": {"INVALID_ARGUMENT", "CANCELLED_BY_US"},
    "session_unknown": {"NOT_FOUND"},
    "session_empty": {"INVALID_ARGUMENT"},
    "session_switch": {"INVALID_ARGUMENT"},
    "control_valid_own": {"OK"},
    "control_valid_unknown": {"NOT_FOUND"},
    "control_valid_empty": {"NOT_FOUND"},
    "control_valid_reload": {"OK"},
    "control_invalid_own": {"INVALID_ARGUMENT"},
    "control_invalid_unknown": {"INVALID_ARGUMENT"},
    "control_invalid_empty": {"INVALID_ARGUMENT"},
    "cancel_frames_retry": {"OK", "CANCELLED_BY_US"},
    "cancel_delay_retry": {"OK", "CANCELLED_BY_US"},
    "cancel_stop_retry": {"OK", "CANCELLED_BY_US"},
    "random_text": {"OK", "CANCELLED_BY_US"},
    **{f"bad_utf8_{w}": {"INVALID_ARGUMENT"} for w in ("text", "session_id")},
    # the first chunk may already have made a unit: it speaks before the bad chunk is read
    "bad_utf8_later": {"INVALID_ARGUMENT", "OK"},
}


@pytest.mark.asyncio
async def test_the_grpc_edge_survives_a_seeded_fuzz(worker: DaemonProc) -> None:
    rng = random.Random(SEED)
    kinds, weights = zip(*_CASES, strict=True)
    plan = [
        (rng.choices(kinds, weights)[0], random.Random(rng.getrandbits(64))) for _ in range(CASES)
    ]
    queue: asyncio.Queue[tuple[Case, random.Random]] = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    results: list[Result] = []
    started = time.monotonic()
    async with TTSClient(worker.addr) as client, aio.insecure_channel(worker.addr) as raw:
        bystander_sid = (await client.start_session()).session_id
        bystander = asyncio.create_task(_bystander(client, bystander_sid))

        async def run_slot(index: int) -> None:
            model = "piper-en-us-joe" if index < 2 else "espeak-en"  # Piper's path too
            sid = (await client.start_session(model_id=model)).session_id
            slot = Slot(client, raw, sid)
            while not queue.empty():
                case, case_rng = queue.get_nowait()
                try:
                    results.append(await asyncio.wait_for(case(case_rng, slot), CASE_TIMEOUT_S))
                except TimeoutError:
                    results.append(Result(case.__name__, "HUNG"))
            await client.end_session(sid)

        await asyncio.gather(*(run_slot(i) for i in range(SLOTS)))
        frames = await bystander
        took = time.monotonic() - started
        # afterwards: it serves as before
        sid = (await client.start_session()).session_id
        after = [f async for f in client.synthesize(text_stream(sid, ["Still serving."]))]
        await client.end_session(sid)
        await client.end_session(bystander_sid)
        active = (await client.capabilities()).metrics.active_sessions

    seen = Counter((r.kind, r.code) for r in results)
    print(f"{len(results)} cases in {took:.1f}s (seed {SEED}):")
    for (kind, code), n in sorted(seen.items()):
        print(f"  {kind:28s} {code:18s} {n}")
    assert len(results) == CASES
    wrong = Counter(
        (r.kind, r.code, r.detail[:80])
        for r in results
        if r.code not in EXPECTED.get(r.kind, set())
    )
    assert not wrong, f"unexpected outcomes: {wrong}"
    assert len({r.kind for r in results}) >= 15  # the plan covered (nearly) every kind
    # the bystander heard its whole sentence, in order, untouched by the others' failures
    assert len(frames) > 100 and frames[-1].is_last
    assert [f.seq for f in frames] == list(range(frames[0].seq, frames[0].seq + len(frames)))
    assert after and after[-1].is_last
    assert active == 0
    log = worker.log_text()
    assert "Traceback" not in log and '"level": "error"' not in log, log[-3000:]


async def _bystander(client: TTSClient, sid: str) -> list[pb.AudioFrame]:
    await asyncio.sleep(0.5)  # the fuzz is under way
    return [f async for f in client.synthesize(text_stream(sid, [SENTENCE, " " + SENTENCE]))]


def test_the_case_table_is_complete() -> None:
    """Every kind a case can report has an expected outcome (a typo would pass silently)."""
    produced = {
        "huge_one", "huge_split", "random_text",
        "session_unknown", "session_empty", "session_switch",
        *(f"control_{v}_{w}" for v in ("valid", "invalid") for w in ("own", "unknown", "empty")),
        "control_valid_reload",
        *(f"cancel_{a}_retry" for a in ("frames", "delay", "stop")),
        *(f"bad_utf8_{w}" for w in ("text", "session_id", "later")),
    }  # fmt: skip
    assert produced == set(EXPECTED)
    codes = {code for codes in EXPECTED.values() for code in codes} - {"OK", "CANCELLED_BY_US"}
    assert codes <= set(grpc.StatusCode.__members__)  # real status names, spelt right
