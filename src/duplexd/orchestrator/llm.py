"""Who writes the replies: the built-in responder, any OpenAI-compatible LLM, or a push host.

A responder turns the conversation so far into a stream of text pieces; the session forwards
them to the TTS worker as they arrive. The session reads the stream only as fast as the worker
takes text (backpressure) and cancels it at a confirmed barge-in.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from duplexd.errors import AuthError, DaemonUnavailable, DuplexError

__all__ = [
    "BuiltinResponder",
    "Message",
    "OpenAIResponder",
    "PushResponder",
    "Responder",
    "create_responder",
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


class PushResponder(Responder):
    """Stream-TTS mode: an external LLM host pushes the reply text into the session."""

    name = "push"

    def __init__(self, maxsize: int = 256) -> None:
        self._queue: asyncio.Queue[tuple[str, bool]] = asyncio.Queue(maxsize)

    def push(self, text: str, final: bool) -> None:
        self._queue.put_nowait((text, final))

    @property
    def pending(self) -> bool:
        return not self._queue.empty()

    async def respond(self, history: list[Message]) -> AsyncIterator[str]:
        while True:
            text, final = await self._queue.get()
            if text:
                yield text
            if final:
                return


def create_responder(
    kind: str,
    *,
    url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    system_prompt: str = "",
    timeout_s: float = 30.0,
) -> Responder:
    if kind == "builtin":
        return BuiltinResponder()
    if kind == "push":
        return PushResponder()
    if kind == "openai":
        if not url or not model:
            raise DuplexError(
                "the openai responder needs a URL and a model", hint="--llm-url … --llm-model …"
            )
        return OpenAIResponder(
            url, model, api_key=api_key, system_prompt=system_prompt, timeout_s=timeout_s
        )
    raise DuplexError(f"unknown responder {kind!r}", hint="builtin | openai | push")
