"""API keys and bind-address safety, shared by the worker (gRPC) and orchestrator (HTTP/WS)."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable

from duplexd.errors import AuthError, ConfigError

__all__ = ["check_key", "ensure_safe_bind", "is_loopback", "key_from_metadata"]


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def ensure_safe_bind(host: str, api_key: str | None, allow_insecure_remote: bool) -> None:
    """Refuse to listen beyond loopback without a key: a voice endpoint is an open mic."""
    if api_key or is_loopback(host) or allow_insecure_remote:
        return
    raise ConfigError(
        f"refusing to bind {host} without an API key",
        hint="set DUPLEX_API_KEY, bind 127.0.0.1, or pass --allow-insecure-remote",
    )


def key_from_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """`authorization: Bearer <key>` or `x-api-key: <key>`."""
    for name, value in metadata:
        text = value.decode() if isinstance(value, bytes) else value
        if name.lower() == "authorization" and text.lower().startswith("bearer "):
            return text[7:].strip()
        if name.lower() == "x-api-key":
            return text.strip()
    return None


def check_key(expected: str | None, presented: str | None) -> None:
    """No-op when no key is configured; constant-time comparison otherwise."""
    if expected is None:
        return
    if presented is None:
        raise AuthError("missing API key", hint="send `authorization: Bearer <DUPLEX_API_KEY>`")
    if not hmac.compare_digest(expected.encode(), presented.encode()):
        raise AuthError("wrong API key")
