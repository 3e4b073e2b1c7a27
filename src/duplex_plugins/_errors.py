"""Worker errors, for the frameworks' own error types (see `duplex_plugins._worker`)."""

from __future__ import annotations

from typing import Literal

from duplexd import errors

__all__ = ["ErrorKind", "error_kind", "http_status"]

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
