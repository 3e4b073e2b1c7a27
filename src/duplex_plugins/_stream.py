"""The connection and one utterance: `WorkerLink` (the gRPC client and the idle worker-session
pool) and `Speech` (text in, frames out, stop) (see `duplex_plugins._worker`)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from grpc import aio

from duplex_plugins._resolve import ResolvedWorker, resolve_worker
from duplex_plugins._types import SpeechOptions, SpeechTiming, StopReport, WorkerModel
from duplexd import errors
from duplexd.rpc import tts_pb2 as pb
from duplexd.rpc.client import TTSClient, error_from_rpc

if TYPE_CHECKING:
    from duplexd.rpc.tts_pb2 import AudioFrame

__all__ = ["Speech", "WorkerLink"]

log = logging.getLogger("duplex_plugins")
_ids = itertools.count(1)


@dataclass(eq=False, slots=True)
class _Session:
    session_id: str
    model_id: str
    opts: SpeechOptions
    client: TTSClient
    next_seq: int | None = 0  # seq of this session's next frame (None: unknown)


class WorkerLink:
    """One plugin instance's worker: resolved and connected on first use, sessions pooled.

    Safe to create outside an event loop (the gRPC channel is made in the loop that uses it).
    """

    def __init__(
        self,
        worker: str | None = None,
        *,
        redis_url: str | None = None,
        api_key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout_s: float = 10.0,
        idle_sessions: int = 2,
        stop_grace_s: float = 2.0,
    ) -> None:
        self.worker = worker
        self.redis_url = redis_url
        self.api_key = api_key if api_key is not None else os.environ.get("DUPLEX_API_KEY") or None
        self.credentials = credentials
        self.timeout_s = timeout_s
        self.idle_sessions = idle_sessions
        self.stop_grace_s = stop_grace_s
        self.resolved: ResolvedWorker | None = None
        self._client: TTSClient | None = None
        self._lock: asyncio.Lock | None = None
        self._idle: dict[SpeechOptions, list[_Session]] = {}
        self._closed = False

    @property
    def addr(self) -> str:
        return self.resolved.addr if self.resolved else (self.worker or "")

    async def client(self, model: str = "") -> TTSClient:
        """The worker's client, resolving the worker first if needed."""
        if self._closed:
            raise errors.DaemonUnavailable("this duplex TTS has been closed")
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._client is None:
                resolved = await resolve_worker(self.worker, redis_url=self.redis_url, model=model)
                self._client = TTSClient(
                    resolved.addr,
                    api_key=self.api_key,
                    credentials=self.credentials,
                    timeout_s=self.timeout_s,
                )
                self.resolved = resolved
                log.debug(
                    "duplex worker %s (%s) at %s", resolved.name, resolved.source, resolved.addr
                )
            return self._client

    async def invalidate(self, client: TTSClient) -> None:
        """The worker behind `client` is gone: forget it (a fleet resolves another next time)."""
        if self._client is not client:
            return
        self._client = None
        for sessions in self._idle.values():
            sessions.clear()
        await client.aclose()

    async def prepare(self, opts: SpeechOptions) -> str:
        """Connect and open one session for `opts` (loading its model if needed); its model id."""
        session = await self._acquire(opts)
        await self._release(session, reusable=True)
        return session.model_id

    def speech(self, opts: SpeechOptions) -> Speech:
        return Speech(self, opts)

    async def list_models(self) -> list[WorkerModel]:
        client = await self.client()
        try:
            resp = await client.list_models()
        except errors.DaemonUnavailable:
            await self.invalidate(client)
            raise
        return [WorkerModel.from_pb(m) for m in resp.models]

    async def drop_idle(self, keep: SpeechOptions | None = None) -> None:
        """End idle sessions of other options (after a model or voice switch, so the old model's
        lease goes and the worker may unload it on its TTL)."""
        for opts in list(self._idle):
            if opts != keep:
                for session in self._idle.pop(opts):
                    await self._end(session)

    async def aclose(self) -> None:
        if self._closed:
            return
        await self.drop_idle()
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- sessions ---------------------------------------------------------------------------

    async def _acquire(self, opts: SpeechOptions) -> _Session:
        client = await self.client(opts.model)
        idle = self._idle.get(opts)
        if idle:
            return idle.pop()
        try:
            resp = await client.start_session(opts.model, opts.voice, opts.language)
        except errors.DaemonUnavailable:
            await self.invalidate(client)
            raise
        return _Session(resp.session_id, resp.model_id, opts, client)

    async def _release(self, session: _Session, *, reusable: bool) -> None:
        idle = self._idle.setdefault(session.opts, [])
        if (
            reusable
            and not self._closed
            and session.client is self._client
            and len(idle) < self.idle_sessions
        ):
            idle.append(session)
        else:
            await self._end(session)
        # idle sessions are kept for the options in use only: after a model or voice switch
        # the old model's lease goes at the end of the first turn on the new one
        await self.drop_idle(keep=session.opts)

    async def _end(self, session: _Session) -> None:
        if session.client is not self._client:
            return  # its worker was dropped (or we are closing): nothing to tell it
        with contextlib.suppress(errors.DuplexError):
            await session.client.end_session(session.session_id)


# -- one utterance -------------------------------------------------------------------------


@dataclass(slots=True)
class _End:
    error: errors.DuplexError | None = None


@dataclass(slots=True)
class _CallState:
    closed: bool = False
    status: str = ""
    seqs: list[int] = field(default_factory=list)


class Speech:
    """One utterance on the worker (see the module docstring).

    `push_text` / `end_input` may be called before or while `frames()` runs; `frames()` yields
    the worker's 20 ms frames as they arrive. `stop()` (idempotent) ends the utterance on the
    worker; `aclose()` releases the session (stopping first if frames are still coming).
    """

    def __init__(self, link: WorkerLink, opts: SpeechOptions) -> None:
        self.id = f"duplex-{next(_ids)}"
        self.link = link
        self.opts = opts
        self.timing = SpeechTiming()
        self.stop_report: StopReport | None = None
        self.stop_requested = False  # for callers that schedule `stop()` (one report each)
        self.frames_delivered = 0
        self._parts: list[str] = []
        self._input_ended = False
        self._changed = asyncio.Event()
        self._queue: asyncio.Queue[AudioFrame | _End] = asyncio.Queue()
        self._session: _Session | None = None
        self._call: aio.StreamStreamCall[pb.TextChunk, pb.AudioFrame] | None = None
        self._state = _CallState()
        self._reader: asyncio.Task[None] | None = None
        self._first_seq: int | None = None  # seq the worker gives this utterance's first frame
        self._stopping = False
        self._stop_lock = asyncio.Lock()
        self._stop_done = False
        self._released = False

    # -- text in ----------------------------------------------------------------------------

    def push_text(self, text: str) -> None:
        if text:
            self._parts.append(text)
            self._changed.set()

    def end_input(self) -> None:
        self._input_ended = True
        self._changed.set()

    async def _feed(self, session_id: str, state: _CallState) -> AsyncIterator[pb.TextChunk]:
        """The request stream of one Synthesize call: every part pushed so far, then what comes,
        then is_final. It ends when the call ends, so grpc's request task never outlives it."""
        i = 0
        while not state.closed:
            if i < len(self._parts):
                i += 1
                yield pb.TextChunk(session_id=session_id, text=self._parts[i - 1])
                continue
            if self._input_ended:
                yield pb.TextChunk(session_id=session_id, is_final=True)
                return
            self._changed.clear()
            await self._changed.wait()

    # -- frames out -------------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        return self._session.session_id if self._session else ""

    @property
    def stopping(self) -> bool:
        """Stopped (or closing): no frame is handed out any more."""
        return self._stopping

    @property
    def model_id(self) -> str:
        return self._session.model_id if self._session else ""

    async def frames(self, *, frame_timeout_s: float | None = None) -> AsyncIterator[AudioFrame]:
        """The worker's frames as they arrive; DuplexError on a worker error.

        `frame_timeout_s` bounds the wait for the first frame and between frames
        (TimeoutError)."""
        retried = False
        await self._open()
        while True:
            async with asyncio.timeout(frame_timeout_s):
                item = await self._queue.get()
            if isinstance(item, _End):
                error = item.error
                if error is None or self._stopping:
                    return
                if (
                    not retried
                    and self.frames_delivered == 0
                    and error.status == "NOT_FOUND"
                    and error.message.startswith("no session")
                ):
                    # a pooled session the worker has ended (idle timeout, restart): once more,
                    # on a new session (the other idle ones are likely gone too)
                    retried = True
                    self._session = None
                    self.link._idle.pop(self.opts, None)
                    await self._open()
                    continue
                raise error
            if self._stopping:
                return
            self.frames_delivered += 1
            yield item

    async def _open(self) -> None:
        if self._stopping:
            self._queue.put_nowait(_End())
            return
        session = await self.link._acquire(self.opts)
        if self.stopping:  # stopped while StartSession ran: nothing reached the worker
            await self.link._release(session, reusable=True)
            self._queue.put_nowait(_End())
            return
        self._session = session
        self._first_seq = session.next_seq
        self.timing.session_id, self.timing.model_id = session.session_id, session.model_id
        self._state = _CallState()
        self._call = session.client.synthesize_call(self._feed(session.session_id, self._state))
        self.timing.call_at = time.perf_counter()
        self._reader = asyncio.create_task(
            self._read(self._call, self._state, session), name=f"{self.id}-reader"
        )

    async def _read(
        self,
        call: aio.StreamStreamCall[pb.TextChunk, pb.AudioFrame],
        state: _CallState,
        session: _Session,
    ) -> None:
        """Owns the gRPC stream: queues frames for `frames()`, notes every seq for reports."""
        error: errors.DuplexError | None = None
        try:
            async for frame in call:
                state.seqs.append(frame.seq)
                self.timing.frames += 1
                if self.timing.first_frame_at is None:
                    self.timing.first_frame_at = time.perf_counter()
                if not self._stopping:
                    self._queue.put_nowait(frame)
            state.status = "OK"
        except aio.AioRpcError as exc:
            state.status = exc.code().name
            error = error_from_rpc(exc, session.client.addr)
        except asyncio.CancelledError:
            state.status = "CANCELLED"
            if not call.cancelled():
                raise  # this task was cancelled (aclose), not the call
        finally:
            self.timing.ended_at = time.perf_counter()
            state.closed = True
            self._changed.set()  # the request stream ends with the call
            if state.status != "OK":
                session.next_seq = None  # frames may have been sent that we never read
            elif state.seqs:
                session.next_seq = state.seqs[-1] + 1
            self._queue.put_nowait(_End(error))
            if isinstance(error, errors.DaemonUnavailable):
                await self.link.invalidate(session.client)

    # -- stopping and releasing -------------------------------------------------------------

    async def stop(self, requested_at: float | None = None) -> StopReport | None:
        """Stop the utterance on the worker now; None when nothing was playing there."""
        requested_at = requested_at or time.perf_counter()
        async with self._stop_lock:
            if self._stop_done:
                return self.stop_report
            self._stop_done = True
            self._stopping = True
            self._changed.set()
            reader, session, call = self._reader, self._session, self._call
            if reader is None or session is None or call is None or reader.done():
                return None  # not started at the worker, or already finished there
            report = StopReport(
                session_id=session.session_id,
                requested_at=requested_at,
                requested_unix=time.time() - (time.perf_counter() - requested_at),
                frames_delivered=self.frames_delivered,
            )
            try:
                resp = await session.client.control(session.session_id, pb.STOP)
                report.acked_at = time.perf_counter()
                report.worker_acked_unix = resp.acked_unix
                report.stop_last_seq = resp.last_seq
                report.worker_state = resp.state
            except errors.DuplexError as exc:
                report.error = str(exc)
            seen_at_ack = len(self._state.seqs)
            try:
                async with asyncio.timeout(self.link.stop_grace_s):
                    await asyncio.wait({reader})
            except TimeoutError:
                call.cancel()
            await asyncio.wait({reader})
            state = self._state
            report.frames_received = len(state.seqs)
            report.last_seq = state.seqs[-1] if state.seqs else None
            if report.stop_last_seq is not None:
                before = report.stop_last_seq
                if self._first_seq == 0 and before == 0 and seen_at_ack == 0:
                    # a new session answers last_seq 0 both before and after its first frame;
                    # frame 0 had not reached us by the answer: count it as after STOP
                    before = -1
                report.frames_after_stop = sum(1 for s in state.seqs if s > before)
            report.ended_at = self.timing.ended_at
            report.status = state.status
            self.stop_report = report
            return report

    async def aclose(self) -> None:
        """Release the worker session (stop first if the worker is still sending)."""
        if self._released:
            return
        if self._reader is not None and not self._reader.done() and not self._stopping:
            await self.stop()
        self._stopping = True
        self._changed.set()
        if self._reader is not None:
            if not self._reader.done() and self._call is not None:
                self._call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._released = True
        session, self._session = self._session, None
        if session is not None:
            await self.link._release(session, reusable=self._state.status == "OK")
