"""What every step of a pull shares: its errors, sources, results, progress and `Job`."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from duplexd.errors import DuplexError

if TYPE_CHECKING:
    from duplexd.tts.catalog import ModelMeta

__all__ = [
    "PARTIAL_DIR",
    "BadArchive",
    "ChecksumMismatch",
    "Fetched",
    "Job",
    "Phase",
    "ProgressFn",
    "PullProgress",
    "PullResult",
    "PullStatus",
    "Reporter",
    "Source",
    "SourceKind",
    "SourceNotFound",
    "SourceUnreachable",
]

PARTIAL_DIR = ".partial"
"""Under the models dir: downloads in progress and folders being assembled."""

_REPORT_EVERY_S = 0.1


# -- errors ----------------------------------------------------------------------------------


class SourceUnreachable(DuplexError):
    """The source could not be reached or the transfer broke off; retrying may work."""

    status = "UNAVAILABLE"
    exit_code = 8


class SourceNotFound(DuplexError):
    """The source answered, but has no such file, folder or repository."""

    status = "NOT_FOUND"
    exit_code = 3


class ChecksumMismatch(DuplexError):
    """The archive's SHA-256 is not the one the catalog (or ``--sha256``) names."""

    status = "DATA_LOSS"
    exit_code = 6


class BadArchive(DuplexError):
    """The archive is unreadable, empty, or unsafe (members escaping the target folder)."""

    status = "DATA_LOSS"
    exit_code = 6


# -- results and progress --------------------------------------------------------------------

Phase = Literal["download", "verify", "extract", "copy"]
SourceKind = Literal["http", "file", "dir", "hf"]
PullStatus = Literal["yes", "no", "package", "voicepack", "none"]


@dataclass(frozen=True)
class PullProgress:
    """One progress report, in bytes. `total` is None while unknown (no Content-Length)."""

    phase: Phase
    done: int
    total: int | None
    resumed_from: int = 0  # download: bytes already on disk when this transfer started


ProgressFn = Callable[[PullProgress], None]


@dataclass(frozen=True)
class Source:
    """Where a pull fetches from: `location` is a URL, a local path or a repo id."""

    kind: SourceKind
    location: str
    revision: str | None = None  # hf: branch, tag or commit

    def __str__(self) -> str:
        if self.kind == "hf":
            return f"hf://{self.location}" + (f"@{self.revision}" if self.revision else "")
        return self.location


@dataclass(frozen=True)
class PullResult:
    model_id: str
    path: Path
    source: str
    already_present: bool = False  # nothing fetched: a copy was there (and no force)
    package: str | None = None  # the weights ship in this Python package: nothing to pull
    downloaded_bytes: int = 0  # over the network in this run
    resumed_from: int = 0  # bytes an earlier, interrupted run had already downloaded
    size_bytes: int = 0  # of the installed folder
    files: int = 0
    sha256: str | None = None  # of the archive or single file, as computed
    verified: bool = False  # `sha256` matched an expected checksum
    replaced: bool = False  # force: an existing copy was swapped out
    notes: tuple[str, ...] = field(default=())


# -- one pull's fetch step -------------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    payload: Path  # the folder to move into place
    downloaded: int = 0
    resumed_from: int = 0
    sha256: str | None = None


class Reporter:
    """Calls the progress callback, at most every 0.1 s within a phase (always at the end)."""

    def __init__(self, fn: ProgressFn | None) -> None:
        self._fn = fn
        self._phase: Phase | None = None
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(
        self,
        phase: Phase,
        done: int,
        total: int | None,
        resumed_from: int = 0,
        *,
        flush: bool = False,
    ) -> None:
        if self._fn is None:
            return
        with self._lock:
            now = time.monotonic()
            final = flush or (total is not None and done >= total)
            if phase == self._phase and not final and now - self._last < _REPORT_EVERY_S:
                return
            self._phase, self._last = phase, now
        self._fn(PullProgress(phase, done, total, resumed_from))


class Job:
    """One pull's fetch step: everything it writes stays under `work` (``.partial/<id>/``).

    The fetch functions (`duplexctl.pull.fetch`, `.hf`, `.archive`, `.install`) take it: it
    says which model, where to write, what checksum to expect and whom to report to.
    """

    def __init__(
        self,
        meta: ModelMeta,
        work: Path,
        expected: str | None,
        report: Reporter,
        timeout_s: float,
        hf_endpoint: str | None,
    ) -> None:
        self.model_id = meta.model_id
        self.work = work
        self.staging = Path(tempfile.mkdtemp(prefix="staging-", dir=work))
        self.expected = expected
        self.report = report
        self.timeout_s = timeout_s
        self.hf_endpoint = hf_endpoint
