"""Async client for a TTS worker, shared by the orchestrator, duplexctl, bench and tests.

gRPC errors come back as the same `DuplexError` subclasses the worker raised, so a CLI can
print the worker's message and exit with the matching code.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable
from types import TracebackType
from typing import Any, cast

import grpc
from grpc import aio

from duplexd import errors
from duplexd.rpc import tts_pb2 as pb
from duplexd.rpc import tts_pb2_grpc as pb_grpc

__all__ = ["HINT_KEY", "MESSAGE_KEY", "SynthesisCall", "TTSClient", "error_from_rpc", "text_stream"]

_BY_STATUS: dict[grpc.StatusCode, type[errors.DuplexError]] = {
    grpc.StatusCode.NOT_FOUND: errors.ModelNotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: errors.AuthError,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.UNAVAILABLE: errors.DaemonUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DaemonUnavailable,
}


# Trailing metadata of a worker's error: its message and its hint (UTF-8; `-bin` keys carry bytes)
MESSAGE_KEY = "duplex-message-bin"
HINT_KEY = "duplex-hint-bin"


def error_from_rpc(exc: aio.AioRpcError, addr: str = "") -> errors.DuplexError:
    """Turn a gRPC failure into the DuplexError the worker meant (status kept in the type)."""
    cls = _BY_STATUS.get(exc.code(), errors.DuplexError)
    detail = exc.details() or exc.code().name
    if cls is errors.DaemonUnavailable:
        return cls(f"worker {addr} unavailable: {detail}", hint="is it running? `duplexctl status`")
    sent = {key: value for key, value in exc.trailing_metadata() or () if isinstance(value, bytes)}
    if MESSAGE_KEY in sent:  # a duplex worker: message and hint apart, as raised
        hint = sent.get(HINT_KEY)
        err = cls(sent[MESSAGE_KEY].decode(errors="replace"), hint=hint.decode() if hint else None)
    else:
        err = cls(detail)
    err.status = exc.code().name
    return err


class TTSClient:
    """One channel to one worker. Use as `async with TTSClient(addr) as c:`."""

    def __init__(
        self,
        addr: str,
        *,
        api_key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout_s: float = 30.0,
        options: list[tuple[str, int | str]] | None = None,
    ) -> None:
        self.addr = addr.removeprefix("grpc://")
        self.timeout_s = timeout_s
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        options = [("grpc.keepalive_time_ms", 10_000), ("grpc.enable_retries", 0), *(options or [])]
        self.channel = (
            aio.secure_channel(self.addr, credentials, options=options)
            if credentials
            else aio.insecure_channel(self.addr, options=options)
        )
        self.stub = pb_grpc.TTSStub(self.channel)

    async def __aenter__(self) -> TTSClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.channel.close()

    async def _call(self, method: Any, request: Any, deadline_s: float | None = None) -> Any:
        try:
            return await method(
                request, metadata=self._metadata, timeout=deadline_s or self.timeout_s
            )
        except aio.AioRpcError as exc:
            raise error_from_rpc(exc, self.addr) from None

    async def start_session(
        self,
        model_id: str = "",
        voice: str = "",
        language: str = "",
        session_id: str = "",
        *,
        unpaced: bool = False,
    ) -> pb.StartSessionResp:
        """`unpaced`: frames as fast as the engine makes them (for a file), not real time."""
        req = pb.StartSessionReq(
            model_id=model_id, voice=voice, language=language, session_id=session_id,
            unpaced=unpaced,
        )  # fmt: skip
        return cast(
            pb.StartSessionResp,
            await self._call(self.stub.StartSession, req, deadline_s=max(self.timeout_s, 120.0)),
        )

    def synthesize_call(
        self, chunks: AsyncIterable[pb.TextChunk] | Iterable[pb.TextChunk]
    ) -> aio.StreamStreamCall[pb.TextChunk, pb.AudioFrame]:
        """The raw bidi call, for callers that need to cancel it (barge-in, bench)."""
        # the stub is typed for sync iterables only; grpc.aio accepts async ones too
        return self.stub.Synthesize(chunks, metadata=self._metadata)  # type: ignore[arg-type]

    def open_stream(
        self, chunks: AsyncIterable[pb.TextChunk] | Iterable[pb.TextChunk]
    ) -> SynthesisCall:
        """A Synthesize call whose errors arrive as DuplexError (with the worker's status)."""
        return SynthesisCall(self.synthesize_call(chunks), self.addr)

    async def synthesize(
        self, chunks: AsyncIterable[pb.TextChunk] | Iterable[pb.TextChunk]
    ) -> AsyncIterator[pb.AudioFrame]:
        call = self.synthesize_call(chunks)
        try:
            async for frame in call:
                yield frame
        except aio.AioRpcError as exc:
            raise error_from_rpc(exc, self.addr) from None
        finally:
            call.cancel()

    async def say(self, session_id: str, text: str) -> AsyncIterator[pb.AudioFrame]:
        """Speak one complete text (is_final) and stream its frames."""
        async for frame in self.synthesize(text_stream(session_id, [text])):
            yield frame

    async def control(
        self, session_id: str, command: int, *, deadline_s: float | None = None
    ) -> pb.ControlResp:
        # the stubs type `command` as the Command enum's value type; callers pass pb.PAUSE …
        req = pb.ControlReq(session_id=session_id, command=command)  # type: ignore[arg-type]
        return cast(pb.ControlResp, await self._call(self.stub.Control, req, deadline_s))

    async def end_session(self, session_id: str) -> pb.EndSessionResp:
        return cast(
            pb.EndSessionResp,
            await self._call(self.stub.EndSession, pb.EndSessionReq(session_id=session_id)),
        )

    async def list_models(self) -> pb.ListModelsResp:
        return cast(pb.ListModelsResp, await self._call(self.stub.ListModels, pb.ListModelsReq()))

    async def load_model(
        self, model_id: str, *, pin: bool = False, unpin: bool = False
    ) -> pb.LoadModelResp:
        req = pb.LoadModelReq(model_id=model_id, pin=pin, unpin=unpin)
        return cast(
            pb.LoadModelResp,
            await self._call(self.stub.LoadModel, req, deadline_s=max(self.timeout_s, 300.0)),
        )

    async def unload_model(self, model_id: str, *, force: bool = False) -> pb.UnloadModelResp:
        req = pb.UnloadModelReq(model_id=model_id, force=force)
        return cast(pb.UnloadModelResp, await self._call(self.stub.UnloadModel, req))

    async def capabilities(
        self,
        timeout: float | None = None,  # noqa: ASYNC109  # a gRPC deadline, not an asyncio timeout
    ) -> pb.GetCapResp:
        return cast(
            pb.GetCapResp, await self._call(self.stub.GetCapabilities, pb.GetCapReq(), timeout)
        )


class SynthesisCall:
    """One bidi Synthesize call as an async iterator of frames; gRPC errors become DuplexError."""

    def __init__(self, call: aio.StreamStreamCall[pb.TextChunk, pb.AudioFrame], addr: str) -> None:
        self.call = call
        self.addr = addr

    def __aiter__(self) -> AsyncIterator[pb.AudioFrame]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[pb.AudioFrame]:
        try:
            async for frame in self.call:
                yield frame
        except aio.AioRpcError as exc:
            raise error_from_rpc(exc, self.addr) from None

    def cancel(self) -> bool:
        return self.call.cancel()


async def text_stream(
    session_id: str, parts: AsyncIterable[str] | Iterable[str], *, final: bool = True
) -> AsyncIterator[pb.TextChunk]:
    """TextChunks from text pieces; the last chunk carries is_final."""
    if isinstance(parts, AsyncIterable):
        async for part in parts:
            yield pb.TextChunk(session_id=session_id, text=part)
    else:
        for part in parts:
            yield pb.TextChunk(session_id=session_id, text=part)
    if final:
        yield pb.TextChunk(session_id=session_id, text="", is_final=True)
