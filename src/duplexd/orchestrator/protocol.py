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
import struct
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from duplexd.audio.frames import FRAME_MS, SAMPLE_RATE, frame_bytes
from duplexd.errors import InvalidArgument

__all__ = [
    "CODECS",
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
    kind: Literal["builtin", "openai", "push"] = "builtin"
    url: str | None = None
    model: str | None = None
    api_key: str | None = None


class Hello(_Msg):
    type: Literal["hello"]
    version: int = PROTOCOL_VERSION
    api_key: str | None = None
    sample_rate: int = 16_000
    model: str | None = None
    voice: str | None = None
    language: str | None = "en"
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
    t: float | None = None


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
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"message is not JSON: {exc.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise InvalidArgument("message must be a JSON object with a string `type`")
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
