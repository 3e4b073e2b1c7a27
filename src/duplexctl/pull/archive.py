"""From a fetched file or folder to the payload: safe extraction, a single file, or a copy.

The payload is assembled in the job's staging folder. Archives (``.tar[.gz|.bz2|.xz]``,
``.tgz``, ``.zip``) are checked member by member before anything is written: absolute paths,
``..`` escapes, links pointing outside the model folder, devices and pipes (and links in a
zip), a file named like the folder itself (``.``), and hard links to anything but an earlier
file of the archive are refused. Members that clash while being written (a file where a folder
must go, the same path twice as file and folder) refuse the archive too; only the disk's own
errors (full, read-only, permissions) stay OS errors. An archive holding one top-level folder
contributes that folder's contents.
"""

from __future__ import annotations

import errno
import posixpath
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from duplexctl.pull.base import BadArchive, Job, Reporter, SourceNotFound
from duplexctl.pull.install import hardlink, tree_size
from duplexd.errors import InvalidArgument

__all__ = ["copy_tree", "unpack"]

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


def unpack(job: Job, file: Path, name: str, *, keep: bool) -> Path:
    """Extract an archive (or place a single file) in the staging folder: the payload."""
    payload = job.staging / "payload"
    payload.mkdir()
    kind = _archive_kind(name)
    if kind is None:  # a single file, e.g. model.onnx
        dest = payload / name
        if keep or not hardlink(file, dest):
            _copy_file(job, file, dest)
        return payload
    if kind == "zip":
        _extract_zip(file, name, payload, job.report)
    else:
        _extract_tar(file, name, payload, job.report)
    entries = [p for p in payload.iterdir() if p.name != "__MACOSX"]
    if not entries:
        raise BadArchive(f"{name} is empty", hint="check the source: it holds no files")
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        root = entries[0]  # one top-level folder: its contents are the model
    else:
        shutil.rmtree(payload / "__MACOSX", ignore_errors=True)
        root = payload
    _check_links_inside(root, name)
    return root


def _check_links_inside(root: Path, name: str) -> None:
    """Every link must stay inside the model folder as installed. The members were checked
    against the archive's root; a link to that root (``a/b/l -> ../..``) would point one level
    up, into the models folder, once the single top-level folder ``a`` becomes the model."""
    top = root.resolve()
    for link in (p for p in root.rglob("*") if p.is_symlink()):
        target = (link.parent / link.readlink()).resolve()
        if target != top and not target.is_relative_to(top):
            raise BadArchive(
                f"{name} is unsafe: link {link.relative_to(root)} -> {link.readlink()} points "
                "outside the model folder; nothing was installed",
                hint="the archive is broken or was tampered with: check where it comes from",
            )


def _copy_file(job: Job, src: Path, dest: Path) -> None:
    total, done = src.stat().st_size, 0
    with src.open("rb") as fin, dest.open("wb") as fout:
        while chunk := fin.read(1 << 20):
            fout.write(chunk)
            done += len(chunk)
            job.report("copy", done, total)
    shutil.copystat(src, dest)


def copy_tree(job: Job, src: Path) -> Path:
    """Copy a folder (following symlinks, as in a Hugging Face cache snapshot)."""
    dest = job.staging / "payload"
    if dest.resolve().is_relative_to(src.resolve()):
        raise InvalidArgument(
            f"--from {src} contains the models folder itself",
            hint="pass the folder holding this model's files",
        )
    total = tree_size(src, follow=True)[0]
    done = 0
    job.report("copy", 0, total)

    def copy(from_: str, to: str) -> object:
        nonlocal done
        shutil.copy2(from_, to)
        done += Path(to).stat().st_size
        job.report("copy", done, max(total, done))
        return to

    shutil.copytree(src, dest, copy_function=copy)
    if not any(dest.iterdir()):
        raise SourceNotFound(f"{src} is empty", hint="pass the folder holding the files")
    return dest


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


def _check_member(
    archive: str, name: str, link: str | None = None, *, hard: bool = False, folder: bool = False
) -> None:
    """Refuse absolute members, ``..`` escapes, links pointing outside the model folder and
    anything but a folder named like the folder itself."""
    unix = name.replace("\\", "/")
    if unix.startswith("/") or re.match(r"^[A-Za-z]:", unix):
        problem = f"member {name!r} has an absolute path"
    elif not folder and posixpath.normpath(unix or ".") == ".":
        problem = f"member {name!r} names the model folder itself"
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


def _extract_tar(archive: Path, name: str, dest: Path, report: Reporter) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            files: set[str] = set()  # earlier regular files: what a hard link may point to
            for m in members:
                if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                    raise BadArchive(
                        f"{name} is unsafe: member {m.name!r} is a device or pipe; "
                        "nothing was installed",
                        hint="model archives hold files, folders and links only",
                    )
                link = m.linkname if (m.issym() or m.islnk()) else None
                _check_member(name, m.name, link, hard=m.islnk(), folder=m.isdir())
                if m.islnk() and _norm(m.linkname) not in files:
                    raise BadArchive(
                        f"{name} is broken: hard link {m.name!r} -> {m.linkname!r} does not "
                        "point to an earlier file of the archive; nothing was installed",
                        hint="the archive is broken or was tampered with: check where it comes "
                        "from",
                    )
                if m.isfile():
                    files.add(_norm(m.name))
            total = sum(m.size for m in members if m.isfile())
            try:
                tar.extractall(dest, members=_counting(members, total, report), filter="data")
            except OSError as exc:
                raise _clash(name, exc) from None
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
    members: list[tarfile.TarInfo], total: int, report: Reporter
) -> Iterator[tarfile.TarInfo]:
    done = 0
    report("extract", 0, total)
    for member in members:
        yield member
        if member.isfile():
            done += member.size
            report("extract", done, total)


def _extract_zip(archive: Path, name: str, dest: Path, report: Reporter) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_member(name, info.filename, folder=info.is_dir())
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise BadArchive(
                        f"{name}: member {info.filename!r} is a symbolic link; "
                        "nothing was installed",
                        hint="repack the model without links (zip -r without -y)",
                    )
            total, done = sum(i.file_size for i in infos), 0
            report("extract", 0, total)
            for info in infos:
                try:
                    zf.extract(info, dest)
                except OSError as exc:
                    raise _clash(name, exc) from None
                done += info.file_size
                report("extract", done, total)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise _unreadable(name, "zip", exc) from None


def _norm(path: str) -> str:
    return posixpath.normpath(path.replace("\\", "/"))


# Errors a member's path causes (not the disk): a file where a folder must go and the like.
_CLASHES = frozenset(
    {errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG, errno.ELOOP}
)


def _clash(name: str, exc: OSError) -> Exception:
    """A member that cannot be written where the archive puts it refuses the archive; the
    disk's own errors (full, read-only, permissions) stay what they are."""
    if exc.errno not in _CLASHES:
        return exc
    return BadArchive(
        f"{name} is broken: {exc.strerror or exc} ({Path(exc.filename or '').name or '?'}): "
        "its members clash (a file where a folder must go, one path twice); nothing was "
        "installed",
        hint="the archive is broken or was tampered with: check where it comes from",
    )


def _unreadable(name: str, kind: str, exc: BaseException) -> BadArchive:
    return BadArchive(
        f"{name} is not a readable {kind} archive: {exc or type(exc).__name__}; "
        "nothing was installed",
        hint="the file is damaged or not an archive: check the source (a download was "
        "deleted, so the next pull fetches it afresh)",
    )
