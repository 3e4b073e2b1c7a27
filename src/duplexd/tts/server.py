"""The gRPC edge of the worker: protobuf <-> domain, DuplexError -> status code, API key."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from duplexd.auth import check_key, key_from_metadata
from duplexd.errors import DuplexError, InvalidArgument
from duplexd.logging import get_logger, session_context
from duplexd.rpc import tts_pb2 as pb
from duplexd.rpc import tts_pb2_grpc as pb_grpc
from duplexd.rpc.client import HINT_KEY, MESSAGE_KEY
from duplexd.tts.catalog import ModelMeta
from duplexd.tts.description import describe
from duplexd.tts.manager import ModelStatus
from duplexd.tts.session import TextIn
from duplexd.tts.worker import Worker

__all__ = ["ApiKeyInterceptor", "TTSServicer", "model_info"]

log = get_logger("duplexd.tts.server")
R = TypeVar("R")

_STATES = {
    "not_loaded": pb.NOT_LOADED,
    "loading": pb.LOADING,
    "resident": pb.RESIDENT,
    "unloading": pb.UNLOADING,
    "unavailable": pb.UNAVAILABLE,
}


_COMMANDS = frozenset({pb.PAUSE, pb.RESUME, pb.STOP, pb.RELOAD})


def model_info(s: ModelStatus) -> pb.ModelInfo:
    return pb.ModelInfo(
        id=s.model_id,
        family=s.family,
        state=_STATES[s.state],
        status=s.status,
        resident=s.state == "resident",
        pinned=s.pinned,
        is_default=s.is_default,
        refcount=s.refcount,
        last_used_unix=s.last_used_unix or 0.0,
        ttl_remaining_ms=-1 if s.ttl_remaining_ms is None else s.ttl_remaining_ms,
        memory_bytes=s.memory_bytes,
        estimated_memory_bytes=s.estimated_memory_bytes,
        load_ms=s.load_ms or 0.0,
        tags=list(s.tags),
        languages=list(s.languages),
        native_sr=s.native_sr,
        device=s.device,
        unavailable_reason=s.unavailable_reason or "",
        loaded_unix=s.loaded_unix or 0.0,
        base_model=s.base_model or "",
        adapters=list(s.adapters),
    )


def with_catalog(info: pb.ModelInfo, meta: ModelMeta | None) -> pb.ModelInfo:
    """Add what the catalog says of a model (voices, description) to its status."""
    if meta is not None:
        info.voices.extend(meta.voices)
        info.default_voice = meta.default_voice or ""
        info.description = meta.description
    return info


async def _abort(context: aio.ServicerContext[Any, Any], exc: DuplexError) -> None:
    """The status and ``message (hint)`` as details; message and hint apart in the trailing
    metadata too, so `duplexd.rpc.client` rebuilds the error as it was raised."""
    await context.abort(
        grpc.StatusCode[exc.status], str(exc), trailing_metadata=error_metadata(exc)
    )


def error_metadata(exc: DuplexError) -> tuple[tuple[str, bytes], ...]:
    metadata = [(MESSAGE_KEY, exc.message.encode())]
    if exc.hint:
        metadata.append((HINT_KEY, exc.hint.encode()))
    return tuple(metadata)


def _unary(
    fn: Callable[[Any, Any, aio.ServicerContext[Any, Any]], Awaitable[R]],
) -> Callable[[Any, Any, aio.ServicerContext[Any, Any]], Awaitable[R]]:
    """Map DuplexError to its status; anything else is a bug: log it, answer INTERNAL."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: aio.ServicerContext[Any, Any]) -> R:
        try:
            return await fn(self, request, context)
        except DuplexError as exc:
            await _abort(context, exc)
        except (asyncio.CancelledError, aio.AbortError):
            raise
        except Exception as exc:
            log.exception("rpc failed", rpc=fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        raise AssertionError("unreachable: abort raises")

    return wrapper


class TTSServicer(pb_grpc.TTSServicer):
    def __init__(self, worker: Worker, addr: str = "") -> None:
        self.worker = worker
        self.addr = addr

    @_unary
    async def StartSession(
        self, request: pb.StartSessionReq, context: aio.ServicerContext[Any, Any]
    ) -> pb.StartSessionResp:
        session = await self.worker.start_session(
            request.model_id, request.voice, request.language, request.session_id,
            unpaced=request.unpaced,
        )  # fmt: skip
        return pb.StartSessionResp(
            session_id=session.id,
            model_id=session.model_id,
            sample_rate=48000,
            frame_ms=20,
            worker_name=self.worker.name,
        )

    # A coroutine writing with `context.write`, not an async generator: when the client cancels
    # while gRPC is writing a frame, the CancelledError lands here, so the utterance ends at once
    # (`finally`). A generator would sit at its `yield` until garbage-collected, and until then
    # the session stayed "already speaking" for the client's next call.
    async def Synthesize(  # type: ignore[override]  # the reader/writer form grpc.aio accepts
        self, request_iterator: AsyncIterator[pb.TextChunk], context: aio.ServicerContext[Any, Any]
    ) -> None:
        try:
            first = await _next_chunk(request_iterator)
            if first is None or not first.session_id:
                raise InvalidArgument("the first TextChunk must carry session_id")
            session = self.worker.session(first.session_id)
            utterance = await session.begin(self.worker.config.worker, self.worker.executor)
            frames = utterance.run(_text_in(first), _texts(request_iterator))
            try:
                with session_context(session.id):
                    async for frame in frames:
                        await context.write(
                            pb.AudioFrame(
                                pcm=frame.pcm,
                                sample_rate=frame.sample_rate,
                                frame_ms=frame.frame_ms,
                                seq=frame.seq,
                                unit=frame.unit,
                                unit_text=frame.unit_text,
                                is_last=frame.is_last,
                            )
                        )
            finally:
                await frames.aclose()
                await utterance.close()
            session.touch()
            self.worker.telemetry.utterance_done(
                session.model_id, utterance.stats, utterance.adapter.last_rtf
            )
        except DuplexError as exc:
            await _drain(request_iterator)
            await _abort(context, exc)

    @_unary
    async def Control(
        self, request: pb.ControlReq, context: aio.ServicerContext[Any, Any]
    ) -> pb.ControlResp:
        # proto3 enums are open: any int32 arrives, and Command.Name() of an unknown one raised
        # ValueError (answered INTERNAL). Checked first, before the session is looked up.
        if request.command not in _COMMANDS:
            raise InvalidArgument(
                f"unknown control command {request.command}",
                hint="PAUSE (1), RESUME (2), STOP (3) or RELOAD (4)",
            )
        name = pb.Command.Name(request.command)
        self.worker.telemetry.c_control.labels(name).inc()
        if request.command == pb.RELOAD:
            count = self.worker.reload()
            return pb.ControlResp(ok=True, state="reloaded", detail=f"{count} models in catalog")
        received = time.perf_counter()
        session = self.worker.session(request.session_id)
        utt = session.utterance
        active = utt is not None and not utt.done
        if request.command == pb.PAUSE and utt is not None and active:
            utt.pause()
            self.worker.telemetry.h_pause.observe((time.perf_counter() - received) * 1000)
        elif request.command == pb.RESUME and utt is not None and active:
            utt.resume()
        elif request.command == pb.STOP and utt is not None and active:
            utt.stop()
        return pb.ControlResp(
            ok=True,
            state=session.state,
            last_seq=session.last_seq_sent or 0,
            acked_unix=time.time(),
            detail="" if active else "no utterance in progress",
        )

    @_unary
    async def EndSession(
        self, request: pb.EndSessionReq, context: aio.ServicerContext[Any, Any]
    ) -> pb.EndSessionResp:
        self.worker.end_session(request.session_id)
        return pb.EndSessionResp(ok=True)

    @_unary
    async def ListModels(
        self, request: pb.ListModelsReq, context: aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResp:
        catalog = self.worker.catalog
        models = [
            with_catalog(model_info(s), catalog.get(s.model_id) if s.model_id in catalog else None)
            for s in self.worker.manager.list()
        ]
        return pb.ListModelsResp(models=models, worker_name=self.worker.name)

    @_unary
    async def LoadModel(
        self, request: pb.LoadModelReq, context: aio.ServicerContext[Any, Any]
    ) -> pb.LoadModelResp:
        manager = self.worker.manager
        if request.unpin:
            return pb.LoadModelResp(
                model=model_info(manager.set_pinned(request.model_id, False)), already_resident=True
            )
        result = await manager.load(request.model_id, pin=request.pin)
        return pb.LoadModelResp(
            model=model_info(result.status),
            already_resident=result.already_resident,
            load_ms=result.load_ms,
            evicted=result.evicted,
        )

    @_unary
    async def UnloadModel(
        self, request: pb.UnloadModelReq, context: aio.ServicerContext[Any, Any]
    ) -> pb.UnloadModelResp:
        freed = await self.worker.manager.unload(request.model_id, force=request.force)
        return pb.UnloadModelResp(ok=True, freed_bytes=freed)

    @_unary
    async def GetCapabilities(
        self, request: pb.GetCapReq, context: aio.ServicerContext[Any, Any]
    ) -> pb.GetCapResp:
        return capabilities(self.worker, self.addr)


def capabilities(worker: Worker, addr: str) -> pb.GetCapResp:
    """The worker's description as GetCapResp (the announcer renders the same one to JSON)."""
    d = describe(worker, addr)
    return pb.GetCapResp(
        worker_name=d.name,
        capabilities=pb.Capabilities(
            streaming=True, zero_shot=d.zero_shot, lora=d.lora, cpu_ok=d.cpu_ok,
            languages=d.languages, emotive_zero_prompt=d.emotive_zero_prompt,
            families=d.families,
        ),
        audio=pb.AudioSpec(sr=d.sample_rate, frame_ms=d.frame_ms),
        hardware=pb.Hardware(
            gpu=d.gpu, device=d.device, ram_total_bytes=d.ram_total_bytes,
            ram_available_bytes=d.ram_available_bytes, process_rss_bytes=d.process_rss_bytes,
            cpu_count=d.cpu_count,
        ),
        resident_models=d.resident_models,
        metrics=pb.WorkerMetrics(
            rtf=d.rtf, queue_depth=d.queue_depth, fal_p50_ms=d.fal_p50_ms,
            fal_p95_ms=d.fal_p95_ms, active_sessions=d.active_sessions,
            frames_sent=d.frames_sent, late_frames=d.late_frames, jitter_p95_ms=d.jitter_p95_ms,
        ),
        version=d.version,
        started_unix=d.started_unix,
        addr=d.addr,
    )  # fmt: skip


def _text_in(chunk: pb.TextChunk) -> TextIn:
    return TextIn(chunk.session_id, chunk.text, chunk.is_final)


async def _drain(requests: AsyncIterator[Any], limit_s: float = 0.5) -> None:
    """Read (and drop) what the client is still sending before failing its Synthesize call.

    A status sent while the client still writes reaches grpc.aio clients as INTERNAL
    "Internal error from Core" instead of our code and message (grpc/grpc#36066), so the
    error waits for the client's `is_final` or half-close, at most `limit_s`.
    """

    async def consume() -> None:
        async for chunk in requests:
            if getattr(chunk, "is_final", False):
                return

    with contextlib.suppress(Exception):
        await asyncio.wait_for(consume(), limit_s)


async def _texts(requests: AsyncIterator[pb.TextChunk]) -> AsyncIterator[TextIn]:
    while (chunk := await _next_chunk(requests)) is not None:
        yield _text_in(chunk)


async def _next_chunk(requests: AsyncIterator[pb.TextChunk]) -> pb.TextChunk | None:
    """The next TextChunk (None at the end). One that does not parse (proto3 strings must be
    UTF-8: a lone surrogate, a cut multi-byte sequence) is the client's error, INVALID_ARGUMENT,
    not grpc's UNKNOWN "Unexpected DecodeError"."""
    try:
        return await anext(requests, None)
    except DecodeError:
        raise InvalidArgument(
            "a TextChunk could not be parsed: its strings must be valid UTF-8",
            hint="send UTF-8 text: no lone surrogates or cut multi-byte characters",
        ) from None


class ApiKeyInterceptor(aio.ServerInterceptor):
    """Every RPC must present the key when one is configured (UNAUTHENTICATED otherwise)."""

    def __init__(self, api_key: str | None) -> None:
        self.api_key = api_key

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or self.api_key is None:
            return handler
        if handler_call_details.method.startswith("/grpc.health"):
            return handler
        try:
            check_key(
                self.api_key, key_from_metadata(handler_call_details.invocation_metadata or ())
            )
        except DuplexError as exc:
            return _deny(handler, str(exc))
        return handler


def _deny(
    handler: grpc.RpcMethodHandler[Any, Any], message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    # grpc.aio accepts a plain coroutine for streaming handlers: abort before any reply
    async def stream(requests: Any, context: aio.ServicerContext[Any, Any]) -> None:
        await _drain(requests)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming:
        return grpc.stream_stream_rpc_method_handler(stream)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(unary)
    return grpc.unary_unary_rpc_method_handler(unary)
