"""The client protocol, version 1 (documented in docs/protocol.md).

Client -> server: one JSON `hello` first, then binary messages of exactly one 20 ms frame of
s16le mono PCM at the declared rate (640 bytes at 16 kHz, 1920 at 48 kHz) and JSON messages
(`text`, `llm`, `end`, `ping`). Server -> client: JSON events and binary audio frames, each an
8-byte header (seq u32, turn u16, flags u16; little endian) followed by 1920 bytes of 48 kHz
PCM. With `codec: "opus"` in the hello, every binary message in both directions carries one
Opus packet instead of the PCM (after the same header, from the server). Nothing malformed
closes the connection except a bad or missing hello.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from duplexd.audio.frames import FRAME_MS, SAMPLE_RATE, frame_bytes
from duplexd.errors import AuthError, DuplexError, InvalidArgument

__all__ = [
    "CODECS",
    "ERROR_CODES",
    "FLAG_LAST",
    "HEADER",
    "INPUT_RATES",
    "PROTOCOL_VERSION",
    "ClientMessage",
    "EndMsg",
    "Hello",
    "LlmChoice",
    "LlmMsg",
    "PingMsg",
    "TextMsg",
    "error_code",
    "pack_audio",
    "parse_client_json",
    "unpack_audio",
]

PROTOCOL_VERSION = 1
INPUT_RATES = (16_000, 48_000)
CODECS = ("pcm", "opus")
HEADER = struct.Struct("<IHH")
FLAG_LAST = 0x1  # the last frame of a reply


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LlmChoice(_Msg):
    """Who writes the replies. `openai` names one of the operator's LLM endpoints: `endpoint`
    (a name in `llm.endpoints`) or a `url` equal to an allowed one; no kind with an endpoint or
    url means openai, with neither builtin."""

    kind: Literal["builtin", "openai", "push"] | None = None
    endpoint: str | None = Field(None, max_length=200)
    url: str | None = Field(None, max_length=2000)
    model: str | None = Field(None, max_length=200)
    api_key: str | None = Field(None, max_length=4000)


class Hello(_Msg):
    type: Literal["hello"]
    version: int = PROTOCOL_VERSION
    api_key: str | None = Field(None, max_length=4096)
    sample_rate: int = 16_000
    model: str | None = Field(None, max_length=200)
    voice: str | None = Field(None, max_length=200)
    language: str | None = Field("en", max_length=35)
    llm: LlmChoice | None = None
    aec: bool = Field(True, description="the client cancels its own echo")
    codec: Literal["pcm", "opus"] = Field("pcm", description="audio encoding, both directions")

    def input_frame_bytes(self) -> int:
        return frame_bytes(self.sample_rate, FRAME_MS)


class TextMsg(_Msg):
    type: Literal["text"]
    text: str = Field(..., min_length=1, max_length=4000)


class LlmMsg(_Msg):
    type: Literal["llm"]
    text: str = Field("", max_length=4000)
    final: bool = False


class EndMsg(_Msg):
    type: Literal["end"]


class PingMsg(_Msg):
    type: Literal["ping"]
    t: float | None = Field(None, allow_inf_nan=False)  # echoed: must stay valid JSON


ClientMessage = Hello | TextMsg | LlmMsg | EndMsg | PingMsg
_TYPES: dict[str, type[_Msg]] = {
    "hello": Hello,
    "text": TextMsg,
    "llm": LlmMsg,
    "end": EndMsg,
    "ping": PingMsg,
}


def parse_client_json(raw: str) -> ClientMessage:
    """Parse one JSON message; every problem is an InvalidArgument naming what is wrong."""
    if _too_deep(raw):
        raise InvalidArgument(f"message is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"message is not JSON: {exc.msg}") from None
    except RecursionError:  # `_too_deep` should have said so: belt and braces
        raise InvalidArgument("message is nested too deeply") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise InvalidArgument("message must be a JSON object with a string `type`")
    if "\\u" in raw:  # an escaped lone surrogate is JSON but not text: no worker could say it
        try:
            json.dumps(data, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise InvalidArgument("a string has a lone surrogate (\\uD800-\\uDFFF)") from None
    cls = _TYPES.get(data["type"])
    if cls is None:
        raise InvalidArgument(
            f"unknown message type {data['type']!r}", hint=f"one of: {', '.join(_TYPES)}"
        )
    try:
        msg = cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidArgument(f"bad {data['type']} message: {problems}") from None
    if isinstance(msg, Hello):
        _check_hello(msg)
    return msg  # type: ignore[return-value]  # cls is one of the ClientMessage members


MAX_JSON_DEPTH = 32
"""No client message needs more than a few levels; the parser's recursion must never be the
judge (a few thousand `[` would end the connection without a word)."""

_DEPTH_RE = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _too_deep(raw: str) -> bool:
    if raw.count("[") + raw.count("{") <= MAX_JSON_DEPTH:
        return False
    depth = 0
    for m in _DEPTH_RE.finditer(raw):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif c in "]}":
            depth -= 1
    return False


def _check_hello(hello: Hello) -> None:
    if hello.version != PROTOCOL_VERSION:
        raise InvalidArgument(
            f"protocol version {hello.version} not supported", hint=f"use {PROTOCOL_VERSION}"
        )
    if hello.sample_rate not in INPUT_RATES:
        raise InvalidArgument(
            f"sample_rate {hello.sample_rate} not supported", hint="send 16000 or 48000 Hz"
        )
    if hello.codec == "opus":
        from duplexd.audio.opus import opus_available

        if not opus_available():
            raise InvalidArgument(
                "codec opus is not available on this orchestrator (PyAV without libopus)",
                hint='use codec "pcm"',
            )


ERROR_CODES = frozenset({
    "invalid_argument", "malformed_frame", "unauthenticated", "llm_not_allowed", "busy",
    "unavailable", "idle_timeout", "slow_client", "not_push_mode", "resource_exhausted",
    "not_found", "no_worker", "failed_precondition", "internal",
})  # fmt: skip
"""Every `code` an `error` event can carry; docs/protocol.md's error table lists exactly these."""


def error_code(exc: DuplexError) -> str:
    """The documented `code` for an error: its own `code`, else its status's (a status with no
    entry in ERROR_CODES, e.g. one a worker passed through, reads `internal`)."""
    own = getattr(exc, "code", None)
    if isinstance(own, str):
        return own
    if isinstance(exc, AuthError):
        return "unauthenticated"
    code = exc.status.lower()
    return code if code in ERROR_CODES else "internal"


def pack_audio(seq: int, turn: int, pcm: bytes, *, last: bool = False) -> bytes:
    return HEADER.pack(seq & 0xFFFFFFFF, turn & 0xFFFF, FLAG_LAST if last else 0) + pcm


def unpack_audio(message: bytes, codec: str = "pcm") -> tuple[int, int, int, bytes]:
    """(seq, turn, flags, payload) of a server audio message: PCM, or one Opus packet."""
    if codec == "pcm" and len(message) != HEADER.size + frame_bytes(SAMPLE_RATE):
        raise InvalidArgument(f"audio message has {len(message)} bytes")
    if len(message) <= HEADER.size:
        raise InvalidArgument(f"audio message has {len(message)} bytes: no payload")
    seq, turn, flags = HEADER.unpack_from(message)
    return seq, turn, flags, message[HEADER.size :]


def event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}
