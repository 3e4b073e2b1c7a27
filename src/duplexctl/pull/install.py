"""The checksum, the lock and the one `rename` that puts a model into the models dir.

Nothing half-written is ever at ``<models_dir>/<model_id>``: the complete folder is moved in
with one rename, or, replacing a copy (``force``), exchanged with it atomically where Linux
offers ``renameat2(RENAME_EXCHANGE)``. One pull of a model runs at a time (a lock file under
``.partial/``). The small filesystem helpers the other steps share live here too.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from duplexctl.pull.base import ChecksumMismatch, Job
from duplexctl.pull.fetch import discard
from duplexd.errors import BusyError

__all__ = [
    "hardlink",
    "importable",
    "install",
    "locked",
    "nonempty",
    "occupied",
    "prune",
    "size",
    "tree_size",
    "verify",
]


def verify(job: Job, path: Path, *, delete: bool) -> str:
    """SHA-256 of `path`; a mismatch with the expected one raises (deleting a download)."""
    digest = hashlib.sha256()
    total, done = path.stat().st_size, 0
    job.report("verify", 0, total)
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            done += len(chunk)
            job.report("verify", done, total)
    value = digest.hexdigest()
    if job.expected is None or value == job.expected:
        return value
    if delete:
        discard(path)
        hint = (
            "the download was corrupted or the file at the source changed; it was deleted. "
            "Run the pull again; if it fails the same way, the catalog's sha256 is out of "
            "date (check the source, or pass the right one with --sha256)"
        )
    else:
        hint = "this is not the file the checksum describes: check the file or --sha256"
    name = path.name.removesuffix(".part")
    raise ChecksumMismatch(
        f"SHA-256 mismatch for {name}: expected {job.expected}, got {value}; nothing was installed",
        hint=hint,
    )


def install(payload: Path, target: Path, work: Path) -> bool:
    """Move the complete `payload` folder to `target` in one rename; True if one was replaced.

    An existing copy is exchanged with the new one atomically where the OS can
    (``renameat2(RENAME_EXCHANGE)``, Linux), else moved aside, replaced, and deleted after.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if not occupied(target):
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


# -- files and folders -----------------------------------------------------------------------


def hardlink(src: Path, dest: Path) -> bool:
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


def prune(folder: Path) -> None:
    """Remove `folder` if it is empty."""
    with contextlib.suppress(OSError):
        folder.rmdir()


def nonempty(path: Path) -> bool:
    try:
        return path.is_file() or (path.is_dir() and any(path.iterdir()))
    except OSError:
        return False


def occupied(path: Path) -> bool:
    """Something is at `path` that a pull must not overwrite without force."""
    return path.is_symlink() or nonempty(path)


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def tree_size(path: Path, *, follow: bool = False) -> tuple[int, int]:
    """(bytes, files) under `path`; files vanishing meanwhile are skipped."""
    if path.is_file():
        return path.stat().st_size, 1
    total = files = 0
    for root, _, names in os.walk(path, followlinks=follow):
        for name in names:
            with contextlib.suppress(OSError):
                total += Path(root, name).stat().st_size
                files += 1
    return total, files


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# -- one pull of a model at a time -----------------------------------------------------------


@contextlib.contextmanager
def locked(lock: Path, model_id: str) -> Iterator[None]:
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
