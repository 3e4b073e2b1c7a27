"""`duplexctl doctor` on this machine's real environment.

Nothing being checked is faked: failing cases point doctor at real broken inputs (an invalid
config, a catalog entry whose weights are not on disk, a Redis port nobody listens on).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from duplexctl.cli.doctor import Check, Context, run_checks
from duplexctl.cli.doctor_checks import check_configs
from duplexctl.cli.main import app
from duplexd.config import repo_root

runner = CliRunner()
CATALOG_MODELS = ("piper-en-us-joe", "espeak-en")
# Wide enough that no path or model id is folded across lines; no inherited Redis or checkout.
ENV = {"COLUMNS": "250", "DUPLEX_REDIS_URL": None, "DUPLEX_HOME": None}


def doctor(*args: str, **env: str) -> Result:
    return runner.invoke(app, ["doctor", *args], prog_name="duplexctl", env={**ENV, **env})


def doctor_json(*args: str, **env: str) -> tuple[int, list[dict[str, Any]]]:
    result = doctor(*args, "--json", **env)
    return result.exit_code, json.loads(result.stdout)


def row(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    matches = [r for r in rows if r["name"] == name]
    assert len(matches) == 1, f"expected one {name!r} row in {[r['name'] for r in rows]}"
    return matches[0]


@pytest.fixture
def configs(tmp_path: Path) -> Path:
    """A copy of the checkout's configs/ whose catalog and voicepacks paths are absolute."""
    out = tmp_path / "configs"
    shutil.copytree(repo_root() / "configs", out)
    text = (out / "worker.yaml").read_text()
    text = text.replace('"configs/model_catalog.yaml"', f'"{out / "model_catalog.yaml"}"')
    text = text.replace('"voicepacks"', f'"{repo_root() / "voicepacks"}"')
    (out / "worker.yaml").write_text(text)
    return out


def add_model(configs: Path, entry: str) -> None:
    catalog = configs / "model_catalog.yaml"
    catalog.write_text(catalog.read_text() + entry)


# --- this machine -----------------------------------------------------------------------------


def test_doctor_passes_here_and_lists_every_catalog_model() -> None:
    result = doctor()
    assert result.exit_code == 0, result.output
    for model_id in CATALOG_MODELS:
        assert f"model {model_id}" in result.stdout
    for column in ("Check", "Status", "Detail", "Fix"):
        assert column in result.stdout
    assert " 0 fail" in result.stdout


def test_doctor_reports_this_machine_as_it_is() -> None:
    code, rows = doctor_json()
    assert code == 0
    assert row(rows, "python")["status"] == "ok"
    assert row(rows, "portaudio")["status"] == "ok"  # libportaudio2 is installed here
    devices = row(rows, "audio devices")  # ...but there is no sound card
    assert devices["status"] == "warn"
    assert "no audio device" in devices["detail"]
    assert devices["fix"]
    assert row(rows, "espeak-ng")["status"] == "ok"
    assert row(rows, "model piper-en-us-joe")["status"] == "ok"
    assert "en_US-joe-medium.onnx" in row(rows, "model piper-en-us-joe")["detail"]
    assert "espeak-ng" in row(rows, "model espeak-en")["detail"]
    assert row(rows, "redis") == {
        "name": "redis",
        "status": "ok",
        "detail": "not configured (static registry)",
        "fix": "",
    }
    assert row(rows, "config worker.yaml")["status"] == "ok"
    assert row(rows, "config orchestrator.yaml")["status"] == "ok"


def test_every_row_that_is_not_ok_has_a_fix() -> None:
    _, rows = doctor_json("--redis", "redis://127.0.0.1:1")
    assert {r["status"] for r in rows} <= {"ok", "warn", "fail"}
    assert all(r["fix"] for r in rows if r["status"] != "ok")


def table_rows(stdout: str) -> list[tuple[str, str]]:
    """(check, status) of each table row: not a terminal, the table is plain columns, one line
    a row (no box, nothing wrapped), under its header; the summary line follows."""
    lines = stdout.splitlines()
    assert re.match(r"Check\s{2,}Status\s{2,}Detail\s{2,}Fix$", lines[0]), lines[0]
    assert not any(ch in stdout for ch in "─│┃━"), "box characters in piped output"
    cells = [re.split(r"\s{2,}", line.strip()) for line in lines[1:-1]]
    return [(check, status) for check, status, *_ in cells]


def test_json_has_the_same_rows_as_the_table() -> None:
    table = doctor()
    _, rows = doctor_json()
    assert table_rows(table.stdout) == [(r["name"], r["status"]) for r in rows]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "warn", "fail")}
    assert f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail" in table.stdout


# --- broken inputs --------------------------------------------------------------------------


def test_invalid_config_value_fails_naming_the_file_and_key(configs: Path) -> None:
    worker = configs / "worker.yaml"
    worker.write_text(worker.read_text().replace("ttl_ms: 600000", "ttl_ms: -5"))
    result = doctor("--config-dir", str(configs))
    assert result.exit_code == 1
    assert str(worker) in result.stdout
    assert "model_manager.ttl_ms" in result.stdout
    _, rows = doctor_json("--config-dir", str(configs))
    assert row(rows, "config worker.yaml")["status"] == "fail"
    assert row(rows, "config orchestrator.yaml")["status"] == "ok"


def test_invalid_yaml_fails_naming_the_file(configs: Path) -> None:
    (configs / "orchestrator.yaml").write_text("server: [unclosed\n")
    code, rows = doctor_json("--config-dir", str(configs))
    assert code == 1
    bad = row(rows, "config orchestrator.yaml")
    assert bad["status"] == "fail"
    assert str(configs / "orchestrator.yaml") in bad["detail"]
    assert "not valid YAML" in bad["detail"]


def test_config_dir_without_the_files_fails(tmp_path: Path) -> None:
    code, rows = doctor_json("--config-dir", str(tmp_path))
    assert code == 1
    assert "config file not found" in row(rows, "config worker.yaml")["detail"]


def test_no_config_files_at_the_default_place_means_builtin_defaults(tmp_path: Path) -> None:
    rows = check_configs(Context(tmp_path / "configs", config_dir_given=False))
    assert [r.status for r in rows] == ["warn", "warn"]
    assert all("built-in defaults" in r.detail for r in rows)


def test_missing_weights_warn_with_the_path_and_models_pull(configs: Path) -> None:
    add_model(
        configs, "  - {model_id: ghost, family: piper, native_sr: 22050, weights: v/g.onnx}\n"
    )
    result = doctor("--config-dir", str(configs))
    assert result.exit_code == 0, result.output  # not the default model: the worker still starts
    assert "model ghost" in result.stdout
    ghost = row(doctor_json("--config-dir", str(configs))[1], "model ghost")
    assert ghost["status"] == "warn"
    assert str(configs / "v" / "g.onnx") in ghost["detail"]
    assert "duplexctl models pull ghost" in ghost["fix"]


def test_default_model_without_weights_fails(configs: Path) -> None:
    add_model(
        configs, "  - {model_id: ghost, family: piper, native_sr: 22050, weights: v/g.onnx}\n"
    )
    code, rows = doctor_json(
        "--config-dir", str(configs), DUPLEX_MODEL_MANAGER__DEFAULT_MODEL_ID="ghost"
    )
    assert code == 1
    ghost = row(rows, "model ghost")
    assert ghost["status"] == "fail"
    assert ghost["detail"].startswith("default model")
    assert row(rows, "model piper-en-us-joe")["status"] == "ok"


def test_model_of_an_uninstalled_family_and_unknown_ids(configs: Path) -> None:
    add_model(configs, "  - {model_id: alien, family: nonesuch, native_sr: 24000}\n")
    code, rows = doctor_json(
        "--config-dir", str(configs), DUPLEX_MODEL_MANAGER__PRELOAD_MODEL_IDS="[nope]"
    )
    assert code == 0
    assert "no adapter for family 'nonesuch'" in row(rows, "model alien")["detail"]
    assert row(rows, "model nope")["status"] == "warn"


def test_unknown_default_model_fails(configs: Path) -> None:
    code, rows = doctor_json(
        "--config-dir", str(configs), DUPLEX_MODEL_MANAGER__DEFAULT_MODEL_ID="nope"
    )
    assert code == 1
    assert "not in the catalog" in row(rows, "model nope")["detail"]


# --- Redis ------------------------------------------------------------------------------------


def test_unreachable_redis_fails() -> None:
    result = doctor("--redis", "redis://127.0.0.1:1")
    assert result.exit_code == 1
    _, rows = doctor_json("--redis", "redis://127.0.0.1:1")
    redis = row(rows, "redis")
    assert redis["status"] == "fail"
    assert "127.0.0.1:1" in redis["detail"]
    assert "--redis" in redis["detail"]
    assert "redis-server" in redis["fix"]


def test_not_a_redis_url_fails() -> None:
    code, rows = doctor_json("--redis", "http://127.0.0.1:6379")
    assert code == 1
    assert row(rows, "redis")["status"] == "fail"


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server on a free port (starts in ~20 ms)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["redis-server", "--port", str(port), "--save", "", "--dir", str(tmp_path)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_reachable_redis_from_the_environment(redis_url: str) -> None:
    code, rows = doctor_json(DUPLEX_REDIS_URL=redis_url)
    assert code == 0
    redis = row(rows, "redis")
    assert redis["status"] == "ok"
    assert "PONG" in redis["detail"]
    assert "DUPLEX_REDIS_URL" in redis["detail"]


def test_redis_url_from_the_orchestrator_config_with_the_password_hidden(
    configs: Path, redis_url: str
) -> None:
    url = redis_url.replace("redis://", "redis://default:s3cret@")
    orch = configs / "orchestrator.yaml"
    orch.write_text(orch.read_text().replace("url: null", f'url: "{url}"'))
    _, rows = doctor_json("--config-dir", str(configs))
    redis = row(rows, "redis")
    assert str(orch) in redis["detail"]
    assert "s3cret" not in redis["detail"]
    assert "***" in redis["detail"]


# --- robustness -------------------------------------------------------------------------------


def test_a_check_that_raises_becomes_a_fail_row(tmp_path: Path) -> None:
    def broken(ctx: Context) -> Check:
        raise RuntimeError("disk on fire")

    def fine(ctx: Context) -> Check:
        return Check("fine", "ok", "still checked")

    rows = run_checks(Context(tmp_path, False), (("broken", broken), ("fine", fine)))
    assert rows[0] == Check(
        "broken", "fail", "check crashed: RuntimeError: disk on fire", rows[0].fix
    )
    assert rows[0].fix
    assert rows[1].status == "ok"


# --- the fixes are the right ones -------------------------------------------------------------


def test_model_fixes_name_the_real_step(tmp_path: Path) -> None:
    """MeloTTS: nothing to install; Parler: its own environment first; a LoRA voice: its
    base's pull first (and its own from a copy: it has no source)."""
    models = tmp_path / "models"
    _, rows = doctor_json(DUPLEX_MODELS_DIR=str(models))
    melo = row(rows, "model melotts-en")
    assert "cannot serve it" in melo["detail"] and "MeloTTS" in melo["detail"]
    assert "install" not in melo["fix"].replace("installable", "")
    assert "docs/models.md" in melo["fix"]
    parler = row(rows, "model parler-tts-mini-v1")
    assert parler["fix"].startswith("bash scripts/engine-env.sh parler")
    assert "duplexctl models pull parler-tts-mini-v1" in parler["fix"]
    assert "--extra" not in parler["fix"]
    voice = row(rows, "model sesame-unsloth-lora01")
    base_pull, voice_pull = voice["fix"].split("; then ")
    assert base_pull.startswith("duplexctl models pull sesame-csm-1b")
    assert voice_pull.startswith("duplexctl models pull sesame-unsloth-lora01 --from PATH")
    # the base pulled, the voice not yet: only the voice's own copy remains to do
    (models / "sesame-csm-1b").mkdir(parents=True)
    _, rows = doctor_json(DUPLEX_MODELS_DIR=str(models))
    voice = row(rows, "model sesame-unsloth-lora01")
    assert "sesame-csm-1b" not in voice["fix"]
    # and the voice pulled, the base gone: the base's pull
    (models / "sesame-csm-1b").rmdir()
    (models / "sesame-unsloth-lora01").mkdir()
    _, rows = doctor_json(DUPLEX_MODELS_DIR=str(models))
    voice = row(rows, "model sesame-unsloth-lora01")
    assert "base model sesame-csm-1b is not pulled" in voice["detail"]
    assert voice["fix"] == "duplexctl models pull sesame-csm-1b  (its base)"


def test_a_family_no_package_provides_gets_no_install_advice(configs: Path) -> None:
    add_model(configs, "  - {model_id: alien, family: nonesuch, native_sr: 24000}\n")
    add_model(configs, "  - {model_id: et, family: nonesuch, native_sr: 24000, extra: xtts}\n")
    _, rows = doctor_json("--config-dir", str(configs))
    assert "install the plugin that does, or remove" in row(rows, "model alien")["fix"]
    assert row(rows, "model et")["fix"].startswith("uv sync --extra xtts")
