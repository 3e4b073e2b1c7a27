"""`duplexd worker|orchestrator --check-config`: the effective config, checked as start-up would
check it, printed, and nothing started (what the Kubernetes tests run every manifest through)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from duplexd.cli import app


def run(args: list[str], env: dict[str, str] | None = None) -> Result:
    """The CLI in this process, with only `env` as DUPLEX_* environment."""
    clean: dict[str, str | None] = {k: None for k in os.environ if k.startswith("DUPLEX_")}
    return CliRunner().invoke(app, [*args, "--check-config"], env={**clean, **(env or {})})


def test_worker_prints_the_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    conf = tmp_path / "w.yaml"
    conf.write_text("worker:\n  port: 7100\n  host: 0.0.0.0\nmodel_manager:\n  ttl_ms: 1000\n")
    env = {
        "DUPLEX_API_KEY": "s3cret-key",
        "DUPLEX_REDIS_URL": "redis://default:hunter2@redis.example.net:6379/0",
        "DUPLEX_WORKER__NAME": "tts-a",
        "DUPLEX_REDIS__ADVERTISE": "tts-a.workers.svc",
        "DUPLEX_MODEL_MANAGER__PRELOAD_MODEL_IDS": "[espeak-en]",
        "DUPLEX_MODEL_MANAGER__TTL_MS": "2000",
    }
    result = run(["worker", "--config", str(conf), "--port", "7200"], env)
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(result.stdout)
    assert cfg["worker"]["port"] == 7200  # flag > env > file
    assert cfg["model_manager"]["ttl_ms"] == 2000
    assert cfg["worker"]["name"] == "tts-a"
    assert cfg["model_manager"]["preload_model_ids"] == ["espeak-en"]
    assert cfg["auth"]["api_key"] == "***"
    assert cfg["redis"]["url"] == "redis://default:***@redis.example.net:6379/0"
    assert "s3cret-key" not in result.output and "hunter2" not in result.output
    assert "# announces itself as tts-a at grpc://tts-a.workers.svc:7200" in result.stdout
    assert result.stderr == ""


def test_orchestrator_prints_the_effective_config() -> None:
    env = {"DUPLEX_LLM__API_KEY": "sk-llm", "DUPLEX_SERVER__PORT": "8181"}
    result = run(["orchestrator", "--routing", "edge", "--worker", "w0=10.0.0.7:7001"], env)
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(result.stdout)
    assert cfg["routing"]["policy"] == "edge"
    assert cfg["workers"] == [{"name": "w0", "addr": "10.0.0.7:7001"}]
    assert cfg["server"]["port"] == 8181
    assert cfg["llm"]["api_key"] == "***"
    assert "# serves HTTP and WebSocket on 127.0.0.1:8181" in result.stdout


def test_nothing_is_started() -> None:
    # The port the config names is taken: a check that bound it would fail.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = str(sock.getsockname()[1])
        assert run(["worker", "--port", port]).exit_code == 0
        assert run(["orchestrator", "--port", port]).exit_code == 0


@pytest.mark.parametrize(
    ("args", "env", "code", "says"),
    [
        (["worker", "--port", "70000"], {}, 2, "command line: worker.port"),
        (["worker"], {"DUPLEX_WORKER__PROT": "7001"}, 2, "worker.prot: Extra inputs"),
        (["worker", "--host", "0.0.0.0"], {}, 2, "refusing to bind 0.0.0.0 without an API key"),
        (["worker", "--default-model", "piper-en-us-jo"], {}, 3, "unknown model 'piper-en-us-jo'"),
        (
            ["worker", "--redis", "redis://r:6379/0", "--advertise", "w-0.svc:grpc"],
            {}, 2, "the port must be a number",
        ),
        (["orchestrator", "--routing", "fastest"], {}, 2, "unknown routing mode 'fastest'"),
        (["orchestrator", "--config", "/nonexistent/o.yaml"], {}, 2, "config file not found"),
        (["orchestrator", "--frobnicate"], {}, 2, "No such option: --frobnicate"),
    ],
)  # fmt: skip
def test_what_start_up_would_refuse_fails_the_check(
    args: list[str], env: dict[str, str], code: int, says: str
) -> None:
    result = run(args, env)
    assert result.exit_code == code, result.output
    assert says in result.stderr
    assert result.stdout == ""  # no config printed for a config that would not start


def test_an_unknown_preload_id_is_a_warning_as_at_start_up() -> None:
    result = run(["worker", "--preload-models", "espeak-en,espeak-eng"])
    assert result.exit_code == 0  # the worker skips it and serves
    assert "preload model 'espeak-eng' is not in the catalog" in result.stderr
    assert yaml.safe_load(result.stdout)["model_manager"]["preload_model_ids"] == [
        "espeak-en", "espeak-eng",
    ]  # fmt: skip


def test_help_documents_the_flag() -> None:
    for command in ("worker", "orchestrator"):
        result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert "--check-config" in result.stdout
        assert "Starts nothing" in result.stdout
