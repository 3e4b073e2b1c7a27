"""The duplex side of the framework plugins: find a worker, speak through it, stop it.

Shared by `duplex_plugins.livekit` and `duplex_plugins.pipecat`; it imports no framework.

- `resolve_worker` turns what a user wrote into a worker address: ``HOST:PORT``; a daemon name
  from `duplexctl up` (or one registered in the Redis fleet); the fleet itself (the least busy
  worker, preferring one where the model is resident); else the local default.
- `WorkerLink` is one plugin instance's connection: the gRPC client, created on first use, and
  a few idle worker sessions kept per (model, voice, language), so a turn does not pay a
  StartSession and a model stays leased while the plugin uses it.
- `Speech` is one utterance: text in (all at once or as an LLM streams it), the worker's 20 ms
  frames out. A reader task owns the gRPC stream, so a framework cancelling its consumer
  (LiveKit's ``aclose()``, Pipecat's interruption) never cancels the RPC under the worker:
  `Speech.stop` sends STOP, waits for the worker to end the stream, and returns a
  `StopReport` with the worker's own figures (the last frame it had emitted when STOP took
  effect, and every frame it emitted after).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import grpc
from grpc import aio

from duplexd import errors
from duplexd.rpc import tts_pb2 as pb
from duplexd.rpc.client import TTSClient, error_from_rpc

if TYPE_CHECKING:
    from duplexd.rpc.tts_pb2 import AudioFrame

__all__ = [
    "DEFAULT_WORKER",
    "FRAME_MS",
    "SAMPLE_RATE",
    "ErrorKind",
    "ResolvedWorker",
    "Speech",
    "SpeechOptions",
    "SpeechTiming",
    "StopReport",
    "WorkerLink",
    "WorkerModel",
    "error_kind",
    "http_status",
    "pick_from_fleet",
    "resolve_worker",
]

log = logging.getLogger("duplex_plugins")

DEFAULT_WORKER = "127.0.0.1:7001"
SAMPLE_RATE = 48_000  # the worker's wire format: s16le mono, 20 ms frames
FRAME_MS = 20
_STATES = {
    pb.NOT_LOADED: "not_loaded",
    pb.LOADING: "loading",
    pb.RESIDENT: "resident",
    pb.UNLOADING: "unloading",
    pb.UNAVAILABLE: "unavailable",
}
_ids = itertools.count(1)


# -- what the plugins hand their users -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerModel:
    """One model of the worker's catalog, as ListModels reports it."""

    id: str
    family: str
    state: str  # not_loaded | loading | resident | unloading | unavailable
    resident: bool
    is_default: bool
    pinned: bool
    refcount: int  # sessions holding it now
    languages: tuple[str, ...]
    tags: tuple[str, ...]
    native_sr: int
    device: str
    base_model: str  # a LoRA voice: the model it attaches to ("" otherwise)
    adapters: tuple[str, ...]  # a base: the LoRA voices attached now
    memory_bytes: int
    unavailable_reason: str

    @classmethod
    def from_pb(cls, m: pb.ModelInfo) -> WorkerModel:
        return cls(
            id=m.id,
            family=m.family,
            state=_STATES.get(m.state, "unknown"),
            resident=m.resident,
            is_default=m.is_default,
            pinned=m.pinned,
            refcount=m.refcount,
            languages=tuple(m.languages),
            tags=tuple(m.tags),
            native_sr=m.native_sr,
            device=m.device,
            base_model=m.base_model,
            adapters=tuple(m.adapters),
            memory_bytes=m.memory_bytes,
            unavailable_reason=m.unavailable_reason,
        )


@dataclass(frozen=True, slots=True)
class SpeechOptions:
    """Per-session options: empty means the worker's default model / the model's default."""

    model: str = ""
    voice: str = ""
    language: str = ""


@dataclass(slots=True)
class SpeechTiming:
    """When one utterance's milestones happened (``time.perf_counter()`` seconds)."""

    session_id: str = ""
    model_id: str = ""
    call_at: float | None = None  # the Synthesize call was opened (session ready)
    first_frame_at: float | None = None  # the worker's first frame arrived over gRPC
    ended_at: float | None = None  # the worker's stream ended
    frames: int = 0  # frames received from the worker


@dataclass(slots=True)
class StopReport:
    """What happened when a framework stopped an utterance mid-stream.

    `stop_last_seq` and `worker_acked_unix` are the worker's own answer to STOP (the seq of the
    last frame it had emitted when STOP took effect, and its clock then); `frames_after_stop`
    counts the frames of this utterance the worker emitted after that (seq > `stop_last_seq`),
    as they arrived on the gRPC stream until the worker ended it.
    """

    session_id: str
    requested_at: float  # perf_counter: the plugin was told to stop
    requested_unix: float
    acked_at: float | None = None  # perf_counter: the worker answered STOP
    worker_acked_unix: float | None = None
    stop_last_seq: int | None = None
    worker_state: str = ""
    frames_delivered: int = 0  # frames handed to the framework
    frames_received: int = 0  # frames of this utterance that arrived from the worker
    frames_after_stop: int = 0
    last_seq: int | None = None  # the last frame of this utterance seen on the stream
    ended_at: float | None = None  # perf_counter: the worker's stream ended
    status: str = ""  # how the stream ended: OK, or CANCELLED when the plugin had to cancel it
    error: str = ""  # why STOP could not be sent, if it could not

    @property
    def ack_ms(self) -> float | None:
        """Stop requested -> the worker's answer to STOP arrived."""
        return None if self.acked_at is None else (self.acked_at - self.requested_at) * 1000

    @property
    def stream_end_ms(self) -> float | None:
        """Stop requested -> the worker had ended the stream (its trailing status arrived)."""
        return None if self.ended_at is None else (self.ended_at - self.requested_at) * 1000

    @property
    def silent_ms(self) -> float | None:
        """Stop requested -> the worker emitted nothing more: its STOP answer when no frame
        followed it (the worker's pacer may still sleep out the current frame slot before it
        closes the stream), else the end of the stream (also when it had to be cancelled)."""
        if self.frames_after_stop == 0 and self.acked_at is not None and self.status == "OK":
            return self.ack_ms
        return self.stream_end_ms


# -- worker errors, for the frameworks' own error types ------------------------------------

ErrorKind = Literal[
    "not_found",  # unknown model (NOT_FOUND, with "did you mean")
    "invalid_argument",  # unknown voice or language, text too long
    "failed_precondition",  # weights not pulled, extra not installed, corrupt checkpoint
    "busy",  # max_sessions reached, too many loads, no memory (RESOURCE_EXHAUSTED)
    "unauthenticated",
    "unavailable",  # the worker cannot be reached
    "internal",
]
_KINDS: dict[str, ErrorKind] = {
    "NOT_FOUND": "not_found",
    "INVALID_ARGUMENT": "invalid_argument",
    "FAILED_PRECONDITION": "failed_precondition",
    "RESOURCE_EXHAUSTED": "busy",
    "UNAUTHENTICATED": "unauthenticated",
    "UNAVAILABLE": "unavailable",
}
# Both frameworks classify provider errors by HTTP status; these are the worker's, so spelled.
_HTTP: dict[ErrorKind, int] = {
    "not_found": 404,
    "invalid_argument": 400,
    "failed_precondition": 412,
    "busy": 429,
    "unauthenticated": 401,
    "unavailable": 503,
    "internal": 500,
}


def error_kind(exc: errors.DuplexError) -> ErrorKind:
    """What kind of refusal a worker error is (by its gRPC status)."""
    return _KINDS.get(exc.status, "internal")


def http_status(exc: errors.DuplexError) -> int:
    return _HTTP[error_kind(exc)]


# -- finding a worker ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResolvedWorker:
    name: str
    addr: str
    source: Literal["address", "daemon", "fleet", "default"]


def redis_from_env(explicit: str | None) -> str | None:
    return explicit or os.environ.get("DUPLEX_REDIS_URL") or None


def pick_from_fleet(entries: list[dict[str, Any]], model: str = "") -> dict[str, Any]:
    """The registered worker to use: one with `model` resident first, then the shortest queue,
    the fewest sessions, the best first-audio p50 (the orchestrator's order, from the
    announcements alone)."""
    if not entries:
        raise errors.DaemonUnavailable(
            "no TTS worker is registered in the fleet",
            hint="start one with `duplexd worker --redis URL` (or `duplexctl up`)",
        )

    def score(entry: dict[str, Any]) -> tuple[float, ...]:
        metrics = entry.get("metrics") or {}
        resident = entry.get("resident_models") or []
        wanted = model or entry.get("default_model") or ""
        return (
            0 if wanted in resident else 1,
            float(metrics.get("queue_depth") or 0),
            float(metrics.get("active_sessions") or 0),
            float(metrics.get("p50_ms") or 0),
        )

    return min(entries, key=score)


async def resolve_worker(
    worker: str | None = None, *, redis_url: str | None = None, model: str = ""
) -> ResolvedWorker:
    """Which worker a plugin talks to (see the module docstring).

    `worker` is ``HOST:PORT`` (``grpc://`` allowed), a daemon name, or None. `redis_url` (else
    ``DUPLEX_REDIS_URL``) makes fleet names resolvable and, without `worker`, picks from the
    fleet. Unknown names raise InvalidArgument listing the known ones.
    """
    if worker and ":" in worker:
        addr = worker.removeprefix("grpc://")
        return ResolvedWorker(addr, addr, "address")
    url = redis_from_env(redis_url)
    entries: list[dict[str, Any]] = []
    if url:
        from duplexd.fleet.discovery import read_announcements

        entries = await read_announcements(url)
    if not worker and url:
        entry = pick_from_fleet(entries, model)
        addr = str(entry["addr"]).removeprefix("grpc://")
        return ResolvedWorker(str(entry["name"]), addr, "fleet")
    from duplexctl.client.fleet import WorkerTarget, resolve_workers

    registered = [
        WorkerTarget(str(e["name"]), str(e["addr"]).removeprefix("grpc://")) for e in entries
    ]
    target = (await asyncio.to_thread(resolve_workers, worker or None, None, registered))[0]
    if not worker:
        source: Literal["daemon", "default"] = (
            "default" if target.addr == DEFAULT_WORKER else "daemon"
        )
        return ResolvedWorker(target.name, target.addr, source)
    fleet_names = {t.name for t in registered}
    return ResolvedWorker(target.name, target.addr, "fleet" if worker in fleet_names else "daemon")


# -- the connection ------------------------------------------------------------------------


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
