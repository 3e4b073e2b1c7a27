"""A seeded fuzz of `duplexctl models pull` archives (duplexctl.pull.archive).

Each case is a random tar (plain, gz, bz2, xz) or zip of a few members drawn from hostile
material: traversal names (``../``, ``a/../../``, backslashes, drive letters, absolute paths),
symbolic and hard links (escaping, absolute, chained through other links), devices and FIFOs,
members whose header declares a size far beyond the data (8 GiB, 2**63), zip links, duplicate
and empty names, and now and then a corrupted byte. Every case is pulled from a local file into
a fresh models folder beside an "outside" folder.

What must hold for every case: the pull either installs the model or raises a DuplexError (no
other exception escapes); nothing is created, changed or deleted outside the models folder;
an installed model holds no link that resolves outside it; a refused one leaves no trace (no
model folder, no ``.partial``). The seed is fixed (`FUZZ_SEED=N` tries another).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import random
import stat
import tarfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Literal, cast

import pytest

from duplexctl.pull import pull
from duplexd.errors import DuplexError
from duplexd.tts.catalog import ModelMeta

SEED = int(os.environ.get("FUZZ_SEED", "20241204"))
CASES = 300
MODEL = "tiny-voice"

NAMES = [
    "model.bin", "config.json", "voice/model.bin", "voice/config.json", "voice/sub/notes.txt",
    "a/../model.bin", "./voice/x.bin", "voice//y.bin", "voice/", "a", "a/b", "a/b/evil",
    "l/evil", "voice/l/evil", "../evil", "voice/../../evil", "../../../../evil", "..", ".",
    "", "ABS", "C:\\evil", "c:/evil", "voice\\..\\..\\evil", "\\\\server\\share\\evil",
    "é/ü.bin", "x" * 240, "__MACOSX/._model.bin", "voice/./../model.bin", "voice/a/../../..",
]  # fmt: skip
LINK_TARGETS = [
    ".", "..", "../..", "ABS", "model.bin", "voice/model.bin", "sub/..", "../evil", "a", "b",
    "/etc/passwd", "voice/../..", "", "l", "a/b", "../../../../../../tmp", "C:\\x",
]  # fmt: skip
KINDS = ["file", "file", "file", "dir", "symlink", "hardlink", "fifo", "chrdev", "huge"]
HUGE_SIZES = [8 << 30, (1 << 33) - 1, 10**11]
_FORMATS = (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT)


def _meta() -> ModelMeta:
    return ModelMeta.model_validate(
        {"model_id": MODEL, "family": "piper", "native_sr": 22050,
         "weights": f"models://{MODEL}/model.bin"}
    )  # fmt: skip


def _name(rng: random.Random, absolute: str) -> str:
    name = rng.choice(NAMES)
    return absolute + "/evil" if name == "ABS" else name


def _target(rng: random.Random, absolute: str) -> str:
    target = rng.choice(LINK_TARGETS)
    return absolute if target == "ABS" else target


def _tar(rng: random.Random, absolute: str) -> tuple[str, bytes]:
    raw = io.BytesIO()
    fmt = cast(Literal[0, 1, 2], rng.choice(_FORMATS))
    for _ in range(rng.randint(1, 6)):
        kind = rng.choice(KINDS)
        info = tarfile.TarInfo(_name(rng, absolute))
        info.mode = rng.choice([0o644, 0o755, 0o777, 0o4755])
        data = b""
        if kind in ("file", "huge"):
            data = rng.randbytes(rng.randint(0, 64))
            info.size = len(data)
        elif kind == "dir":
            info.type = tarfile.DIRTYPE
        elif kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, _target(rng, absolute)
        elif kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, _target(rng, absolute)
        elif kind == "fifo":
            info.type = tarfile.FIFOTYPE
        else:
            info.type = tarfile.CHRTYPE
        if kind == "huge":  # the header claims far more than follows
            info.size = rng.choice(HUGE_SIZES)
        try:
            header = info.tobuf(fmt, "utf-8", "surrogateescape")
        except ValueError:  # a name this format cannot hold (e.g. too long for ustar)
            continue
        raw.write(header + data + b"\0" * (-len(data) % 512))
    raw.write(b"\0" * 1024)
    body = raw.getvalue()
    suffix, pack = rng.choice(_TAR_PACKERS)
    return suffix, pack(body)


_TAR_PACKERS: list[tuple[str, Callable[[bytes], bytes]]] = [
    (".tar", lambda b: b),
    (".tar.gz", lambda b: gzip.compress(b, mtime=0)),
    (".tgz", lambda b: gzip.compress(b, mtime=0)),
    (".tar.bz2", bz2.compress),
    (".tar.xz", lzma.compress),
]


def _zip(rng: random.Random, absolute: str) -> tuple[str, bytes]:
    buf = io.BytesIO()
    huge: list[str] = []
    with zipfile.ZipFile(buf, "w", rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])) as zf:
        for i in range(rng.randint(1, 6)):
            kind = rng.choice(["file", "file", "dir", "symlink", "huge"])
            name = _name(rng, absolute) or f"empty{i}"
            info = zipfile.ZipInfo(name + ("/" if kind == "dir" and not name.endswith("/") else ""))
            if kind == "symlink":
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                data = _target(rng, absolute).encode()
            else:
                data = b"" if kind == "dir" else rng.randbytes(rng.randint(0, 64))
            if kind == "huge":
                huge.append(info.filename)
            zf.writestr(info, data)
    body = bytearray(buf.getvalue())
    for name in huge:  # claim 4 GiB - 16 in the central directory and the local header
        _patch_sizes(body, name.encode())
    return ".zip", bytes(body)


def _patch_sizes(body: bytearray, name: bytes) -> None:
    big = (0xFFFFFFF0).to_bytes(4, "little")
    at = body.find(b"PK\x03\x04")
    while at != -1:
        if body[at + 30 : at + 30 + len(name)] == name:
            body[at + 22 : at + 26] = big
        at = body.find(b"PK\x03\x04", at + 4)
    at = body.find(b"PK\x01\x02")
    while at != -1:
        if body[at + 46 : at + 46 + len(name)] == name:
            body[at + 24 : at + 28] = big
        at = body.find(b"PK\x01\x02", at + 4)


def _corrupt(rng: random.Random, data: bytes) -> bytes:
    if not data or rng.random() > 0.1:
        return data
    flipped = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
    return bytes(flipped)


def _tree(root: Path, skip: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every path under `root` but `skip`: (mode, content or link target)."""
    out: dict[str, tuple[int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d != skip]
        for name in [*dirnames, *filenames]:
            path = here / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[str(path)] = (st.st_mode, str(path.readlink()))
            elif stat.S_ISREG(st.st_mode):
                out[str(path)] = (st.st_mode, path.read_bytes())
            else:
                out[str(path)] = (st.st_mode, b"")
    return out


@pytest.mark.filterwarnings("ignore:Duplicate name")  # zipfile's, for the duplicates we make
def test_random_hostile_archives_never_write_outside_the_models_folder(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    for i in range(CASES):
        case = tmp_path / f"c{i}"
        models, outside = case / "models", case / "outside"
        outside.mkdir(parents=True)
        (outside / "keep.txt").write_text("keep")
        absolute = str(outside / "abs")  # an absolute path outside the models folder
        suffix, data = (_zip if rng.random() < 0.35 else _tar)(rng, absolute)
        archive = case / f"voice{suffix}"
        archive.write_bytes(_corrupt(rng, data))
        before = _tree(case, models)
        try:
            pull(_meta(), models, source_override=archive)
            installed = True
        except DuplexError as exc:
            installed = False
            outcomes[f"refused: {type(exc).__name__}"] += 1
        except Exception as exc:  # any other exception is a bug in the puller
            pytest.fail(f"case {i} (seed {SEED}, {archive.name}): {type(exc).__name__}: {exc}")
        assert _tree(case, models) == before, f"case {i}: something changed outside the models"
        target = models / MODEL
        if installed:
            outcomes["installed"] += 1
            for path in [target, *target.rglob("*")]:
                real = path.resolve()
                assert real == target.resolve() or real.is_relative_to(target.resolve()), (
                    f"case {i}: {path} resolves outside the model folder, to {real}"
                )
        else:
            assert not target.exists() and not (models / ".partial").exists(), f"case {i}"
    took = time.monotonic() - started
    print(f"{CASES} archives in {took:.1f}s (seed {SEED}): {dict(outcomes)}")
    assert outcomes["installed"] > 0 and len(outcomes) >= 2  # both outcomes were exercised


# -- what the fuzz found, pinned down ------------------------------------------------------------


def _tar_of(*members: tuple[str, bytes, str]) -> bytes:
    """(name, type, link) members; files get 3 bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, kind, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            data = b"abc" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def _zip_of(*names: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in names:
            zf.writestr(name, b"abc")
    return buf.getvalue()


F, SYM, HARD = tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


@pytest.mark.parametrize(
    ("suffix", "archive", "problem"),
    [
        # a link to the archive's root points into the models folder once the single
        # top-level folder `a` becomes the model (it was installed)
        (".tgz", _tar_of(("a/model.bin", F, ""), ("a/b/evil", SYM, "../..")), "points outside"),
        # a file named like the folder itself (was IsADirectoryError)
        (".tgz", _tar_of((".", F, "")), "names the model folder itself"),
        (".zip", _zip_of("."), "names the model folder itself"),
        # hard links to nothing, or to each other (were KeyError, RecursionError)
        (".tgz", _tar_of(("model.bin", F, ""), ("h", HARD, "missing")), "earlier file"),
        (".tgz", _tar_of(("a", HARD, "b"), ("b", HARD, "a")), "earlier file"),
        # a file where a folder must go (were NotADirectoryError / FileExistsError)
        (".tgz", _tar_of(("a", F, ""), ("a/b", F, "")), "clash"),
        (".zip", _zip_of("a", "a/b"), "clash"),
    ],
    ids=[
        "link-to-root",
        "tar-dot",
        "zip-dot",
        "hard-missing",
        "hard-cycle",
        "tar-clash",
        "zip-clash",
    ],
)
def test_archives_the_fuzz_found_are_refused_cleanly(
    tmp_path: Path, suffix: str, archive: bytes, problem: str
) -> None:
    from duplexctl.pull import BadArchive

    source = tmp_path / f"voice{suffix}"
    source.write_bytes(archive)
    models = tmp_path / "models"
    with pytest.raises(BadArchive) as err:
        pull(_meta(), models, source_override=source)
    assert problem in err.value.message
    assert not models.exists() or not any(models.iterdir())
