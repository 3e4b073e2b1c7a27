"""Config: defaults, YAML < DUPLEX_* env < CLI precedence, errors that name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from duplexd.config import OrchestratorConfig, WorkerConfig, load_config, repo_root
from duplexd.errors import ConfigError

CONFIGS = repo_root() / "configs"


def test_sample_files_validate_and_equal_the_defaults() -> None:
    # The samples document the defaults line by line: they must not drift apart.
    assert load_config(WorkerConfig, CONFIGS / "worker.yaml", env={}) == WorkerConfig()
    assert load_config(OrchestratorConfig, CONFIGS / "orchestrator.yaml", env={}) == (
        OrchestratorConfig()
    )


def test_precedence_yaml_env_cli(tmp_path: Path) -> None:
    f = tmp_path / "w.yaml"
    f.write_text(
        "model_manager:\n  ttl_ms: 1000\n  resident_cap: 5\nworker:\n  port: 7100\n  name: w-yaml\n"
    )
    env = {"DUPLEX_MODEL_MANAGER__TTL_MS": "2000", "DUPLEX_WORKER__PORT": "7200"}
    cfg = load_config(
        WorkerConfig, f, env=env, overrides={"worker.port": 7300, "worker.name": None}
    )
    assert cfg.model_manager.resident_cap == 5  # YAML
    assert cfg.model_manager.ttl_ms == 2000  # env beats YAML
    assert cfg.worker.port == 7300  # CLI beats env
    assert cfg.worker.name == "w-yaml"  # an unset flag overrides nothing


def test_env_aliases_and_lists() -> None:
    env = {
        "DUPLEX_API_KEY": "s3cret",
        "DUPLEX_REDIS_URL": "redis://h:6379/0",
        "DUPLEX_MODEL_MANAGER__PRELOAD_MODEL_IDS": "[espeak-en]",
        "UNRELATED": "x",
    }
    cfg = load_config(WorkerConfig, env=env)
    assert cfg.auth.api_key == "s3cret"
    assert cfg.redis.url == "redis://h:6379/0"
    assert cfg.model_manager.preload_model_ids == ["espeak-en"]


def test_errors_name_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("model_manager:\n  ttl_ms: soon\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: model_manager\.ttl_ms: .*integer.*'soon'"):
        load_config(WorkerConfig, f, env={})
    f.write_text("model_manager:\n  ttl_msec: 5\n")  # a typo is an error, not a silent default
    with pytest.raises(ConfigError, match=r"model_manager\.ttl_msec: Extra inputs"):
        load_config(WorkerConfig, f, env={})
    with pytest.raises(ConfigError, match=r"environment: worker\.port"):
        load_config(WorkerConfig, env={"DUPLEX_WORKER__PORT": "-1"})
    with pytest.raises(ConfigError, match=r"command line: vad\.aggressiveness"):
        load_config(OrchestratorConfig, env={}, overrides={"vad.aggressiveness": 7})
    # a combination that would end every turn by the maximum silence
    late = {"DUPLEX_TURN__SMART_TURN_MIN_SILENCE_MS": "1000"}
    with pytest.raises(ConfigError, match=r"turn: .*min_silence_ms \(1000\) must be below"):
        load_config(OrchestratorConfig, env=late)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(WorkerConfig, tmp_path / "missing.yaml", env={})
    bad = tmp_path / "x.yaml"
    bad.write_text("worker: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(WorkerConfig, bad, env={})
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(WorkerConfig, bad, env={})


def test_worker_name_defaults_to_host_and_port_in_fleet_mode() -> None:
    """Unnamed workers of a fleet must not all claim `tts-worker@0`; a given name is kept."""
    import socket

    host = socket.gethostname().split(".")[0]
    assert WorkerConfig().worker_name(7001) == "tts-worker@0"  # the embedded default
    fleet = load_config(WorkerConfig, env={"DUPLEX_REDIS_URL": "redis://h:6379/0"})
    assert fleet.worker_name(7002) == f"tts-{host}-7002"
    named = load_config(WorkerConfig, env={"DUPLEX_REDIS_URL": "redis://h:6379/0"},
                        overrides={"worker.name": "gpu-a"})  # fmt: skip
    assert named.worker_name(7002) == "gpu-a"
