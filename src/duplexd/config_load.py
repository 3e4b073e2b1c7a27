"""Loading a configuration: YAML < ``DUPLEX_*`` environment < CLI flags, and the paths in it.

The typed sections are in `duplexd.config`, which re-exports everything public here; import
from there.

Environment variables: ``DUPLEX_<SECTION>__<KEY>`` (double underscore between levels), e.g.
``DUPLEX_MODEL_MANAGER__TTL_MS=60000``; plus the short aliases in ``ENV_ALIASES``
(``DUPLEX_API_KEY``, ``DUPLEX_REDIS_URL``, ``DUPLEX_MODELS_DIR``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from duplexd.errors import ConfigError

__all__ = ["ENV_ALIASES", "load_config", "repo_root", "resolve_path"]


def repo_root() -> Path:
    """The checkout (or install prefix) holding configs/ and voicepacks/."""
    env = os.environ.get("DUPLEX_HOME")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2]


def resolve_path(path: Path, config_file: Path | None = None) -> Path:
    """A relative path in a config: from the cwd, else the checkout root (where the samples
    put configs/ and voicepacks/), else beside the config file's folder."""
    if path.is_absolute():
        return path
    for base in (Path.cwd(), repo_root(), config_file.parent.parent if config_file else None):
        if base is not None and (base / path).exists():
            return base / path
    return path


ENV_ALIASES: dict[str, str] = {
    "DUPLEX_API_KEY": "auth.api_key",
    "DUPLEX_REDIS_URL": "redis.url",
    "DUPLEX_MODELS_DIR": "model_manager.models_dir",
}

C = TypeVar("C", bound=BaseModel)


def load_config(
    model: type[C],
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> C:
    """Build a config: defaults < YAML file < ``DUPLEX_*`` env < `overrides` (dotted keys)."""
    env = os.environ if env is None else env
    layers: list[tuple[str, dict[str, Any]]] = []
    if path is not None:
        layers.append((str(path), _read_yaml(path)))
    layers.append(("environment", _env_layer(model, env)))
    layers.append(("command line", _dotted_to_nested(dict(overrides or {}))))
    merged: dict[str, Any] = {}
    for source, layer in layers:
        merged = _merge(merged, layer)
        _validate(model, merged, source)  # fail on the first layer that breaks it
    return _validate(model, merged, layers[-1][0])


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def _env_layer(model: type[BaseModel], env: Mapping[str, str]) -> dict[str, Any]:
    dotted: dict[str, Any] = {}
    sections = set(model.model_fields)
    for name, value in env.items():
        if name in ENV_ALIASES:
            key = ENV_ALIASES[name]
        elif name.startswith("DUPLEX_") and "__" in name:
            key = name.removeprefix("DUPLEX_").lower().replace("__", ".")
        else:
            continue
        if key.split(".", 1)[0] in sections:
            dotted[key] = yaml.safe_load(value) if value else value
    return _dotted_to_nested(dotted)


def _dotted_to_nested(dotted: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        if value is None:
            continue  # an unset CLI flag never overrides the file
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _validate(model: type[C], data: dict[str, Any], source: str) -> C:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            + (f" (got {err['input']!r})" if err["type"] != "missing" else "")
            for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None
