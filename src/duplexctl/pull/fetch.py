"""HTTP(S) downloads that resume: ``.partial/<id>/<name>.part`` grows with each attempt.

An interrupted download keeps every byte it received, and its URL and validators (ETag or
Last-Modified) beside it in ``<name>.part.json``; the next pull asks for the rest with
``Range`` and ``If-Range``, and starts over when the server's file is not the one begun.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from duplexctl.format import human_bytes
from duplexctl.pull.base import Job, SourceNotFound, SourceUnreachable
from duplexd.errors import AuthError, DuplexError, InvalidArgument

if TYPE_CHECKING:
    import httpx

__all__ = ["discard", "download", "file_name", "offline_hint", "reason"]


def download(job: Job, url: str, part: Path) -> tuple[int, int]:
    """Fetch `url` into `part`, resuming what is there: (bytes in part, resumed from)."""
    import httpx

    state = _read_state(part)
    if state.get("url") != url:  # another source's bytes are no prefix of this one
        discard(part)
        state = {}
    have = part.stat().st_size if part.exists() else 0
    body = _Body()
    client = httpx.Client(
        follow_redirects=True,
        timeout=httpx.Timeout(job.timeout_s),
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
                    got = _receive(job, resp, url, part, have, body)
                if got is not None:
                    return got
                have, state = 0, {}  # the server's file is not what we have: start over
    except httpx.TransportError as exc:
        raise _transfer_error(job, url, part, body, exc) from None
    except httpx.InvalidURL as exc:
        raise InvalidArgument(f"{url!r} is not a valid URL: {exc}") from None
    raise SourceUnreachable(
        f"{url} keeps answering ranges that do not match the partial download",
        hint=f"delete {part} and run the pull again",
    )


def _receive(
    job: Job, resp: httpx.Response, url: str, part: Path, have: int, body: _Body
) -> tuple[int, int] | None:
    """Append (206) or write (200) the body to `part`; None: start over without a range."""
    status = resp.status_code
    if status == 416:  # nothing past `have`: complete already, or not a prefix of the file
        total = _content_range(resp.headers.get("Content-Range"))[1]
        if have and total == have:
            job.report("download", have, have, have)
            return have, have
        discard(part)
        return None
    if status >= 400:
        raise _status_error(url, resp, job.model_id)
    length = _int(resp.headers.get("Content-Length"))
    if status == 206:
        start, total = _content_range(resp.headers.get("Content-Range"))
        if start != have:
            discard(part)
            return None
        if total is None and length is not None:
            total = have + length
        mode, resumed_from = "ab", have
    else:  # 200: a fresh start, or the server ignored Range / If-Range saw a new file
        mode, resumed_from, have, total = "wb", 0, 0, length
    _write_state(part, url, resp.headers)
    done = have
    body.started, body.total = True, total
    job.report("download", done, total, resumed_from)
    with part.open(mode) as fh:
        try:
            for chunk in resp.iter_raw():  # as it arrives: a broken transfer keeps every byte
                fh.write(chunk)
                done += len(chunk)
                job.report("download", done, total, resumed_from)
        finally:
            job.report("download", done, total, resumed_from, flush=True)
        fh.flush()
        os.fsync(fh.fileno())
    if total is not None and done != total:
        raise SourceUnreachable(
            f"{url} sent {human_bytes(done)} of {human_bytes(total)} and ended the transfer",
            hint=f"run the same command again to resume from {human_bytes(done)}",
        )
    return done, resumed_from


def _transfer_error(
    job: Job, url: str, part: Path, body: _Body, exc: httpx.TransportError
) -> SourceUnreachable:
    why = reason(exc)
    if not body.started:
        host = urlsplit(url).netloc or url
        return SourceUnreachable(
            f"cannot reach {host} to pull {job.model_id}: {why}; nothing was changed",
            hint=offline_hint(job.model_id),
        )
    have = part.stat().st_size if part.exists() else 0
    of = f" of {human_bytes(body.total)}" if body.total else ""
    return SourceUnreachable(
        f"the download of {job.model_id} broke off at {human_bytes(have)}{of}: {why}; "
        "the model folder was not changed",
        hint=f"run the same command again to resume from {human_bytes(have)} (kept in {part})",
    )


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
    return SourceUnreachable(what, hint=f"retry later; {offline_hint(model_id)}")


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


def reason(exc: BaseException) -> str:
    """A short why for a transport error: library reprs nest several exceptions deep."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = " ".join(str(e) for e in chain).lower()
    for needle, why in _REASONS:
        if needle in text:
            return why
    first = (str(exc).splitlines() or [type(exc).__name__])[0]
    return first if len(first) <= 200 else first[:199] + "…"


def offline_hint(model_id: str) -> str:
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


# -- the partial download and its state file ---------------------------------------------------


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


def discard(part: Path) -> None:
    """Delete a partial download and its state: the next pull starts it afresh."""
    part.unlink(missing_ok=True)
    _state_file(part).unlink(missing_ok=True)


def file_name(url: str, model_id: str) -> str:
    """The download's file name: the URL's last path segment, made safe."""
    name = PurePosixPath(unquote(urlsplit(url).path)).name
    name = re.sub(r"[^\w.+-]", "_", name)
    return name if name.strip(".") else f"{model_id}.download"
