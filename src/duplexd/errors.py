"""One error hierarchy for both programs.

Every error carries the gRPC status it maps to (as a name, so this module never imports grpc)
and the process exit code the CLIs use, so a refusal reads the same at every edge: a gRPC
status with a human message on the wire, a message and exit code in the terminal.
"""

from __future__ import annotations

__all__ = [
    "AdapterError",
    "AuthError",
    "BusyError",
    "ConfigError",
    "DaemonUnavailable",
    "DuplexError",
    "FailedPrecondition",
    "InvalidArgument",
    "ModelInUse",
    "ModelLoadError",
    "ModelNotFound",
    "NoAudioDevice",
    "ResourceExhausted",
    "SessionNotFound",
    "WeightsMissing",
]


class DuplexError(Exception):
    """Base of every error duplex raises on purpose.

    `status` is a gRPC status code name (``grpc.StatusCode[status]``); `exit_code` is what a
    CLI exits with when this error ends a command.
    """

    status: str = "INTERNAL"
    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(DuplexError):
    """A config file, environment variable or flag is invalid; names the source and key."""

    status = "INVALID_ARGUMENT"
    exit_code = 2


class InvalidArgument(DuplexError):
    status = "INVALID_ARGUMENT"
    exit_code = 2


class ModelNotFound(DuplexError):
    status = "NOT_FOUND"
    exit_code = 3


class SessionNotFound(DuplexError):
    status = "NOT_FOUND"
    exit_code = 3


class FailedPrecondition(DuplexError):
    status = "FAILED_PRECONDITION"
    exit_code = 4


class ModelInUse(FailedPrecondition):
    """Unload of a model that sessions still hold."""


class ResourceExhausted(DuplexError):
    """No room: memory pre-check failed after evicting idle models, or a capacity limit."""

    status = "RESOURCE_EXHAUSTED"
    exit_code = 5


class BusyError(ResourceExhausted):
    """Too many pending loads or sessions; retry later instead of queueing without bound."""


class ModelLoadError(DuplexError):
    """The engine failed to load a model whose files exist (corrupt file, engine error)."""

    status = "FAILED_PRECONDITION"
    exit_code = 6


class WeightsMissing(ModelLoadError):
    """A catalog model's files are not where the catalog says."""


class AdapterError(DuplexError):
    """An engine failed while synthesizing."""

    status = "INTERNAL"
    exit_code = 6


class AuthError(DuplexError):
    status = "UNAUTHENTICATED"
    exit_code = 7


class DaemonUnavailable(DuplexError):
    """A daemon cannot be reached (not started, crashed, wrong address)."""

    status = "UNAVAILABLE"
    exit_code = 8


class NoAudioDevice(DuplexError):
    status = "UNAVAILABLE"
    exit_code = 9
