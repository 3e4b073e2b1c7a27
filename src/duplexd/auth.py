"""API keys, bind-address safety and TLS credentials, shared by the worker (gRPC) and the
orchestrator (HTTP/WS, and gRPC to its workers)."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from duplexd.errors import AuthError, ConfigError

if TYPE_CHECKING:
    import grpc

    from duplexd.config import WorkerTlsConfig

__all__ = [
    "channel_credentials",
    "check_key",
    "ensure_safe_bind",
    "is_loopback",
    "key_from_metadata",
]


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


def channel_credentials(tls: WorkerTlsConfig) -> grpc.ChannelCredentials:
    """TLS credentials for dialing workers (`worker_tls`): the CA their certificates chain to
    (else the system's roots), plus a client certificate for workers that require one (mTLS).
    The files are read now, so a missing or wrong one stops the orchestrator at start-up with the
    setting's name instead of failing every handshake later."""
    import grpc

    return grpc.ssl_channel_credentials(
        root_certificates=_pem(tls.ca, "worker_tls.ca"),
        private_key=_pem(tls.client_key, "worker_tls.client_key"),
        certificate_chain=_pem(tls.client_cert, "worker_tls.client_cert"),
    )


def _pem(path: Path | None, key: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{key}: {path} is not a PEM file", hint="-----BEGIN ... lines expected")
    return data
