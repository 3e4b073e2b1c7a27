"""Who writes the replies: the built-in responder, any OpenAI-compatible LLM, or a push host.

A responder turns the conversation so far into a stream of text pieces; the session forwards
them to the TTS worker as they arrive. The session reads the stream only as fast as the worker
takes text (backpressure) and cancels it at a confirmed barge-in.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from duplexd.config import LlmConfig
from duplexd.errors import (
    AuthError,
    DaemonUnavailable,
    DuplexError,
    InvalidArgument,
    ResourceExhausted,
)
from duplexd.orchestrator.protocol import LlmChoice

__all__ = [
    "PUSH_UTTERANCE_CHARS",
    "BuiltinResponder",
    "LlmNotAllowed",
    "LlmTarget",
    "Message",
    "OpenAIResponder",
    "PushResponder",
    "Responder",
    "TeeResponder",
    "create_responder",
    "resolve_llm",
]


@dataclass(frozen=True, slots=True)
class Message:
    role: str  # system | user | assistant
    content: str


class Responder(ABC):
    name: str = "responder"

    @abstractmethod
    def respond(self, history: list[Message]) -> AsyncIterator[str]:
        """Text pieces of the reply to the last user message in `history`."""

    async def aclose(self) -> None:  # noqa: B027  # most responders hold nothing
        """Release connections."""


_STORY = (
    "Once upon a time, in a small town by the sea, there lived a lighthouse keeper named Ada. "
    "Every night she climbed the long spiral stairs, lit the great lamp, and watched the ships "
    "find their way home through the fog. One winter evening, a tiny boat with a broken sail "
    "drifted toward the rocks, and Ada rang the old bell as loudly as she could. "
    "The sailors heard it, turned just in time, and came ashore safe and grateful."
)

_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b(story|tale)\b"), _STORY),
    (
        re.compile(r"\b(hello|hi|hey|good (morning|afternoon|evening))\b"),
        "Hello! I'm duplex, a realtime voice assistant. You can interrupt me at any time.",
    ),
    (re.compile(r"\btime\b"), "It is {time} right now."),
    (
        re.compile(r"\b(name|who are you)\b"),
        "I'm duplex, the built-in responder. Connect a language model for real answers.",
    ),
    (
        re.compile(r"\bweather\b"),
        "I can't check the weather offline, but I hope it's pleasant where you are.",
    ),
    (re.compile(r"\b(thanks|thank you)\b"), "You're welcome!"),
    (re.compile(r"\b(bye|goodbye)\b"), "Goodbye! It was nice talking to you."),
]


class BuiltinResponder(Responder):
    """Deterministic replies with no LLM, so the stack runs and is testable anywhere."""

    name = "builtin"

    def __init__(self, clock: type[dt.datetime] = dt.datetime) -> None:
        self._clock = clock

    async def respond(self, history: list[Message]) -> AsyncIterator[str]:
        reply = self.reply_for(history[-1].content if history else "")
        for word in reply.split(" "):
            yield word + " "
            await asyncio.sleep(0)  # a real stream yields control between pieces

    def reply_for(self, text: str) -> str:
        lowered = text.lower()
        for pattern, reply in _RULES:
            if pattern.search(lowered):
                return reply.format(time=self._clock.now().strftime("%H:%M"))
        heard = text.strip().rstrip(".?!") or "nothing"
        return (
            f"You said: {heard}. I'm the built-in responder; "
            "connect a language model with --llm-url for real answers."
        )


class OpenAIResponder(Responder):
    """Streams chat completions from any OpenAI-compatible server (Ollama, llama.cpp, vLLM)."""

    name = "openai"

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str | None = None,
        system_prompt: str = "",
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.system_prompt = system_prompt
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(timeout_s, connect=5.0), transport=transport
        )

    async def respond(self, history: list[Message]) -> AsyncIterator[str]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages += [{"role": m.role, "content": m.content} for m in history]
        body = {"model": self.model, "messages": messages, "stream": True}
        endpoint = f"{self.url}/chat/completions"
        try:
            async with self._http.stream("POST", endpoint, json=body) as resp:
                await _raise_for_status(resp, endpoint)
                async for line in resp.aiter_lines():
                    if (piece := _sse_content(line)) is not None:
                        yield piece
        except httpx.TransportError as exc:
            raise DaemonUnavailable(
                f"LLM at {endpoint} unreachable: {exc}", hint="is the LLM server running?"
            ) from None

    async def aclose(self) -> None:
        await self._http.aclose()


async def _raise_for_status(resp: httpx.Response, endpoint: str) -> None:
    if resp.status_code < 400:
        return
    detail = (await resp.aread()).decode(errors="replace")[:300]
    if resp.status_code in (401, 403):
        raise AuthError(f"LLM at {endpoint} rejected the API key ({resp.status_code})")
    raise DuplexError(f"LLM at {endpoint} answered {resp.status_code}: {detail}")


def _sse_content(line: str) -> str | None:
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if not payload or payload == "[DONE]":
        return None
    try:
        choice = json.loads(payload)["choices"][0]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError):
        return None
    content = (choice.get("delta") or {}).get("content")
    return content if isinstance(content, str) and content else None


PUSH_UTTERANCE_CHARS = 4000
"""Push mode: one utterance (one Synthesize call) takes at most this much text, the worker's
default `max_text_chars`; longer pushed text is spoken as several, split between messages."""


class PushResponder(Responder):
    """Stream-TTS mode: an external LLM host pushes the reply text into the session.

    Bounded and lossless: up to `max_pending_chars` of text (each message counts at least one)
    waits to be spoken; a message beyond that is refused with `ResourceExhausted`, nothing
    accepted is ever dropped. One `respond()` stream ends at a `final` message, or before the
    message that would take it past `PUSH_UTTERANCE_CHARS`: that message opens the next one.
    """

    name = "push"

    def __init__(self, max_pending_chars: int = 65_536) -> None:
        self.max_pending_chars = max_pending_chars
        self._queue: collections.deque[tuple[str, bool]] = collections.deque()
        self._arrived = asyncio.Event()
        self._pending_chars = 0

    def push(self, text: str, final: bool) -> None:
        if not text and not final:
            return  # nothing to say
        weight = max(1, len(text))
        if self._pending_chars + weight > self.max_pending_chars:
            raise ResourceExhausted(
                f"push mode: {self._pending_chars} characters are still waiting to be spoken; "
                f"this message ({len(text)}) would pass llm.push_max_pending_chars "
                f"({self.max_pending_chars}): refused",
                hint="send the rest as the speech catches up (watch the `reply` events)",
            )
        self._queue.append((text, final))
        self._pending_chars += weight
        self._arrived.set()

    @property
    def pending(self) -> bool:
        return bool(self._queue)

    def drop_until_final(self) -> int:
        """The reply being pushed was interrupted: drop its queued text, through its `final`
        (all that is queued if its final has not come yet); returns how many messages."""
        dropped = 0
        while self._queue:
            text, final = self._queue.popleft()
            self._pending_chars -= max(1, len(text))
            dropped += 1
            if final:
                break
        return dropped

    @property
    def pending_chars(self) -> int:
        return self._pending_chars

    async def respond(self, history: list[Message]) -> AsyncIterator[str]:
        spoken = 0
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            text, final = self._queue[0]
            if spoken and spoken + len(text) > PUSH_UTTERANCE_CHARS:
                return  # this message starts the next utterance
            self._queue.popleft()
            self._pending_chars -= max(1, len(text))
            if text:
                spoken += len(text)
                yield text
            if final:
                return


class TeeResponder(Responder):
    """One reply's text as it is read from `inner`, kept so that the reply can be sent again to
    a new worker session (its worker lost the first one) without asking the LLM twice."""

    def __init__(self, inner: Responder) -> None:
        self.inner = inner
        self.name = inner.name
        self.pieces: list[str] = []
        self.finished = False  # the stream was read to its end

    async def respond(self, history: list[Message]) -> AsyncIterator[str]:
        async for piece in self.inner.respond(history):
            self.pieces.append(piece)
            yield piece
        self.finished = True

    def again(self) -> TeeResponder:
        """The same reply from the start: what was read, then (push: what is still to come,
        from the same stream; other responders: asked again if they were cut short)."""
        if not self.finished and not isinstance(self.inner, PushResponder):
            return TeeResponder(self.inner)  # a stateless responder: ask it again
        return TeeResponder(_Replay(list(self.pieces), None if self.finished else self.inner))

    async def aclose(self) -> None:
        pass  # the session closes the responder it owns


class _Replay(Responder):
    """Pieces already read, then the rest of a push stream."""

    def __init__(self, pieces: list[str], rest: Responder | None) -> None:
        self.pieces, self.rest = pieces, rest
        self.name = rest.name if rest is not None else "replay"

    async def respond(self, history: list[Message]) -> AsyncIterator[str]:
        for piece in self.pieces:
            yield piece
        if self.rest is not None:
            async for piece in self.rest.respond(history):
                yield piece


class LlmNotAllowed(DuplexError):
    """A hello asked for an LLM endpoint the operator has not configured."""

    status = "PERMISSION_DENIED"
    code = "llm_not_allowed"


@dataclass(frozen=True, slots=True)
class LlmTarget:
    """Who writes a session's replies: a kind and, for `openai`, an allowed endpoint."""

    kind: str
    url: str | None = None
    model: str | None = None
    api_key: str | None = None


def resolve_llm(choice: LlmChoice | None, cfg: LlmConfig) -> LlmTarget:
    """The hello's `llm` choice against the operator's allow-list (`llm.url`, `llm.endpoints`).

    A client picks an endpoint by name, or by a url equal to an allowed one; any other url is
    refused (`LlmNotAllowed`): the orchestrator never calls an address a client made up, and
    the operator's keys only ever go to the url they were configured with. A client may bring
    its own `api_key` for an allowed endpoint."""
    if choice is None:
        return LlmTarget(cfg.kind, cfg.url, cfg.model, cfg.api_key)
    named = choice.endpoint is not None or choice.url is not None
    kind = choice.kind or ("openai" if named else "builtin")
    if kind != "openai":
        if named or choice.model is not None or choice.api_key is not None:
            raise InvalidArgument(
                f"llm kind {kind!r} takes no endpoint, url, model or api_key",
                hint='use kind "openai" to choose an LLM endpoint',
            )
        return LlmTarget(kind)
    candidates = _allowed_for(choice, cfg)
    if choice.model is not None:
        candidates = [a for a in candidates if a[2] in (None, choice.model)]
        if not candidates:
            raise LlmNotAllowed(
                f"model {choice.model!r} is not configured for that LLM endpoint",
                hint="leave llm.model out to use the endpoint's model",
            )
    _, url, model, key = candidates[0]
    return LlmTarget("openai", url, choice.model or model, choice.api_key or key)


_Allowed = tuple[str | None, str, str | None, str | None]  # (name, url, model, key)


def _allowed_for(choice: LlmChoice, cfg: LlmConfig) -> list[_Allowed]:
    """The operator's endpoints (the default first) that the choice names; never empty."""
    allowed: list[_Allowed] = [(None, cfg.url, cfg.model, cfg.api_key)] if cfg.url else []
    allowed += [
        (name, e.url, e.model, e.api_key.get_secret_value() if e.api_key else None)
        for name, e in cfg.endpoints.items()
    ]
    names = ", ".join(cfg.endpoints) or "none are configured"
    pick_one = f"name one of the operator's llm.endpoints ({names}) as llm.endpoint"
    if choice.endpoint is not None:
        candidates = [a for a in allowed if a[0] == choice.endpoint]
        if not candidates:
            raise LlmNotAllowed(f"no LLM endpoint {choice.endpoint!r} on this orchestrator",
                                hint=pick_one)  # fmt: skip
        if choice.url is not None and not _same_url(choice.url, candidates[0][1]):
            raise LlmNotAllowed(f"llm.url is not the url of endpoint {choice.endpoint!r}")
        return candidates
    if choice.url is not None:
        candidates = [a for a in allowed if _same_url(choice.url, a[1])]
        if not candidates:
            raise LlmNotAllowed(
                "llm.url is not one of the LLM endpoints this orchestrator may call", hint=pick_one
            )
        return candidates
    if not cfg.url:
        raise LlmNotAllowed("no default LLM endpoint on this orchestrator", hint=pick_one)
    return allowed[:1]


def _same_url(a: str, b: str | None) -> bool:
    return b is not None and a.strip().rstrip("/") == b.strip().rstrip("/")


def create_responder(
    kind: str,
    *,
    url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    system_prompt: str = "",
    timeout_s: float = 30.0,
    push_max_pending_chars: int = 65_536,
) -> Responder:
    if kind == "builtin":
        return BuiltinResponder()
    if kind == "push":
        return PushResponder(push_max_pending_chars)
    if kind == "openai":
        if not url or not model:
            raise DuplexError(
                "the openai responder needs a URL and a model", hint="--llm-url … --llm-model …"
            )
        return OpenAIResponder(
            url, model, api_key=api_key, system_prompt=system_prompt, timeout_s=timeout_s
        )
    raise DuplexError(f"unknown responder {kind!r}", hint="builtin | openai | push")
