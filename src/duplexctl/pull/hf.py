"""Hugging Face repos: ``snapshot_download`` into ``.partial/<id>/hf/``, which it resumes.

`huggingface_hub` is imported on use only. Its failures become DuplexErrors that say what to
do: a gated repo wants its terms accepted, a missing one a corrected ``source:``, an offline
machine a copy of the files pulled ``--from`` a local path.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from duplexctl.pull.base import Fetched, Job, Reporter, Source, SourceNotFound, SourceUnreachable
from duplexctl.pull.fetch import offline_hint, reason
from duplexctl.pull.install import size, tree_size
from duplexd.errors import AuthError, DuplexError

__all__ = ["fetch_hf"]


def fetch_hf(job: Job, source: Source) -> Fetched:
    """snapshot_download into ``.partial/<id>/hf/`` (which it resumes), then check it."""
    import huggingface_hub as hub
    from huggingface_hub.utils.tqdm import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    repo = source.location
    local = job.work / "hf"
    api = hub.HfApi(endpoint=job.hf_endpoint)
    bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()  # our caller draws its own
    try:
        info = api.model_info(
            repo, revision=source.revision, files_metadata=True, timeout=job.timeout_s
        )
        sizes: dict[str, int | None] = {s.rfilename: s.size for s in info.siblings or []}
        known = [s for s in sizes.values() if s is not None]
        total = sum(known) if len(known) == len(sizes) else None
        before = tree_size(local)[0] if local.exists() else 0
        with _watch(local, total, before, job.report):
            hub.snapshot_download(
                repo,
                revision=info.sha,  # the commit model_info saw: files and sizes agree
                local_dir=local,
                endpoint=job.hf_endpoint,
                etag_timeout=job.timeout_s,
            )
    except Exception as exc:
        error = _hf_error(exc, source, job.model_id, job.hf_endpoint)
        if error is None:
            raise
        raise error from None
    finally:
        if not bars_were_off:
            enable_progress_bars()
    short = [
        name
        for name, expected in sizes.items()
        if not (local / name).is_file() or (expected is not None and size(local / name) != expected)
    ]
    if short:
        raise SourceUnreachable(
            f"the download of {source} is incomplete: {len(short)} of {len(sizes)} files "
            f"missing or short (e.g. {short[0]}); the model folder was not changed",
            hint="run the same command again: it resumes; " + offline_hint(job.model_id),
        )
    shutil.rmtree(local / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping
    for path in [p for p in local.rglob("*") if p.is_file() or p.is_symlink()]:
        if path.relative_to(local).as_posix() not in sizes:
            path.unlink()  # left by an earlier attempt at another revision
    got = tree_size(local)[0]
    return Fetched(local, max(got - before, 0), before)


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
        because = reason(exc)
        return SourceUnreachable(
            f"cannot reach the Hugging Face Hub ({hub_url}) to pull {model_id} from "
            f"{source.location}{why}: {because}; the model folder was not changed",
            hint=offline_hint(model_id),
        )
    if isinstance(exc, hub_errors.HfHubHTTPError):
        first = str(exc).splitlines()[0]
        return SourceUnreachable(
            f"the Hugging Face Hub failed while pulling {source.location}: {first}",
            hint=f"retry later; {offline_hint(model_id)}",
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
def _watch(folder: Path, total: int | None, before: int, report: Reporter) -> Iterator[None]:
    """Report the folder's growing size while huggingface_hub fills it (it has no callback)."""
    stop = threading.Event()

    def measure() -> int:
        done = tree_size(folder)[0] if folder.exists() else 0
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
