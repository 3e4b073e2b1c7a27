"""`duplexd`: the daemons. `duplexd worker` (TTS) and `duplexd orchestrator`.

Flags override environment (``DUPLEX_*``) which overrides the YAML config; the design's
underscore spellings (``--default_model``, ``--ttl_ms`` …) are accepted beside the dashed ones.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from duplexd.errors import DuplexError

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["app", "main"]

app = typer.Typer(
    name="duplexd",
    help="duplex daemons: the streaming TTS worker and the voice orchestrator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file (see configs/).")
]
LogLevel = Annotated[str, typer.Option("--log-level", help="DEBUG | INFO | WARNING | ERROR")]
InsecureOpt = Annotated[
    bool | None,
    typer.Option("--allow-insecure-remote", help="bind beyond loopback without a key"),
]
ReadyFile = Annotated[
    Path | None,
    typer.Option("--ready-file", help="write {pid, addr, port, metrics_port} here once serving"),
]

CheckConfigOpt = Annotated[
    bool,
    typer.Option(
        "--check-config",
        help="Check the effective config (file < DUPLEX_* env < flags) as start-up would, "
        "print it as YAML (secrets masked) and exit 0; exit 2 (3: unknown default model) "
        "with the reason. Starts nothing: for CI, containers, Kubernetes manifests.",
    ),
]

RedisOpt = Annotated[
    str | None,
    typer.Option(
        "--redis",
        help="Redis registry URL: redis://[USER:PASS@]HOST:6379/0 or rediss:// (DUPLEX_REDIS_URL)",
    ),
]


@app.callback()
def _root() -> None:
    """duplex daemons: the streaming TTS worker and the voice orchestrator."""


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value is not None else None


@app.command()
def worker(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="bind address [127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="gRPC port [7001]; 0 picks one")] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="worker name, unique in a fleet (default tts-worker@0; with --redis: "
            "tts-HOST-PORT)"
        ),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", "--metrics_port", help="Prometheus port [9101]")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda:N [auto]")] = None,
    adapter: Annotated[
        str | None,
        typer.Option(help="serve only this family (e.g. parler from its engine env) [all]"),
    ] = None,
    default_model: Annotated[
        str | None,
        typer.Option("--default-model", "--default_model", help="loaded + warmed at start"),
    ] = None,
    preload_models: Annotated[
        str | None,
        typer.Option("--preload-models", "--preload_models", help="comma-separated ids"),
    ] = None,
    ttl_ms: Annotated[int | None, typer.Option("--ttl-ms", "--ttl_ms", help="idle TTL")] = None,
    min_residency_ms: Annotated[
        int | None, typer.Option("--min-residency-ms", "--min_residency_ms")
    ] = None,
    evict_check_interval_ms: Annotated[
        int | None, typer.Option("--evict-check-interval-ms", "--evict_check_interval_ms")
    ] = None,
    resident_cap: Annotated[
        int | None, typer.Option("--resident-cap", "--resident_cap", help="LRU cap")
    ] = None,
    max_parallel_loads: Annotated[
        int | None, typer.Option("--max-parallel-loads", "--max_parallel_loads")
    ] = None,
    lead_ms: Annotated[
        int | None, typer.Option("--lead-ms", "--lead_ms", help="audio sent ahead of real time")
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="server cert (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="server key (PEM)")] = None,
    tls_client_ca: Annotated[
        Path | None, typer.Option("--tls-client-ca", help="require client certs (mTLS)")
    ] = None,
    allow_insecure_remote: InsecureOpt = None,
    redis: RedisOpt = None,
    advertise: Annotated[
        str | None,
        typer.Option(
            "--advertise", help="HOST[:PORT] orchestrators dial (multi-host); default: bound addr"
        ),
    ] = None,
    ready_file: ReadyFile = None,
    log_level: LogLevel = "INFO",
    check_config: CheckConfigOpt = False,
) -> None:
    """Run a TTS worker: gRPC streaming synthesis with a hot-swapping Model Manager."""
    overrides: dict[str, Any] = {
        "worker.host": host,
        "worker.port": port,
        "worker.name": name,
        "worker.metrics_port": metrics_port,
        "worker.device": device,
        "worker.adapter": adapter,
        "worker.lead_ms": lead_ms,
        "model_manager.default_model_id": default_model,
        "model_manager.preload_model_ids": _csv(preload_models),
        "model_manager.ttl_ms": ttl_ms,
        "model_manager.min_residency_ms": min_residency_ms,
        "model_manager.evict_check_interval_ms": evict_check_interval_ms,
        "model_manager.resident_cap": resident_cap,
        "model_manager.max_parallel_loads": max_parallel_loads,
        "auth.tls_cert": tls_cert,
        "auth.tls_key": tls_key,
        "auth.tls_client_ca": tls_client_ca,
        "auth.allow_insecure_remote": allow_insecure_remote,
        "redis.url": redis,
        "redis.advertise": advertise,
    }
    if check_config:
        _check_config(_check_worker, config, overrides)
        return
    from duplexd.config import WorkerConfig, load_config
    from duplexd.logging import configure_logging

    configure_logging(log_level.upper(), process="worker")
    _run(
        lambda: _worker_main(
            load_config(WorkerConfig, config, overrides=overrides), config, ready_file
        )
    )


@app.command()
def orchestrator(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="bind address [127.0.0.1]")] = None,
    port: Annotated[
        int | None, typer.Option(help="HTTP/WebSocket port [8080]; 0 picks one")
    ] = None,
    worker: Annotated[
        list[str] | None,
        typer.Option("--worker", "-w", help="NAME=HOST:PORT of a TTS worker (repeatable)"),
    ] = None,
    llm: Annotated[str | None, typer.Option(help="builtin | openai | push [builtin]")] = None,
    llm_url: Annotated[
        str | None, typer.Option("--llm-url", help="OpenAI-compatible base URL, e.g. …/v1")
    ] = None,
    llm_model: Annotated[str | None, typer.Option("--llm-model", help="LLM model name")] = None,
    asr_model: Annotated[
        str | None, typer.Option("--asr-model", help="tiny.en | base | a model directory")
    ] = None,
    vad: Annotated[str | None, typer.Option(help="silero | webrtc [silero]")] = None,
    routing: Annotated[str | None, typer.Option(help="routing mode: default | edge | lora")] = None,
    record: Annotated[
        Path | None, typer.Option("--record", help="opt-in: store session audio in this folder")
    ] = None,
    allow_insecure_remote: InsecureOpt = None,
    redis: RedisOpt = None,
    ready_file: ReadyFile = None,
    log_level: LogLevel = "INFO",
    check_config: CheckConfigOpt = False,
) -> None:
    """Run the orchestrator: WebSocket sessions with VAD, ASR, turn-taking, barge-in, routing."""
    overrides: dict[str, Any] = {
        "server.host": host,
        "server.port": port,
        "workers": _workers(worker) if worker else None,
        "llm.kind": "openai" if llm is None and llm_url else llm,
        "llm.url": llm_url,
        "llm.model": llm_model,
        "asr.model": asr_model,
        "vad.engine": vad,
        "routing.policy": routing,
        "sessions.record_dir": record,
        "auth.allow_insecure_remote": allow_insecure_remote,
        "redis.url": redis,
    }
    if check_config:
        _check_config(_check_orchestrator, config, overrides)
        return
    from duplexd.config import OrchestratorConfig, load_config
    from duplexd.logging import configure_logging

    configure_logging(log_level.upper(), process="orchestrator")
    _run(lambda: _orch_main(load_config(OrchestratorConfig, config, overrides=overrides), config,
                            ready_file))  # fmt: skip


def _workers(specs: list[str]) -> list[dict[str, str]]:
    out = []
    for spec in specs:
        name, sep, addr = spec.partition("=")
        if not sep or not name or ":" not in addr:
            raise typer.BadParameter(f"{spec!r}: expected NAME=HOST:PORT", param_hint="--worker")
        out.append({"name": name, "addr": addr})
    return out


async def _orch_main(cfg: Any, config_file: Path | None, ready_file: Path | None) -> None:
    from duplexd.orchestrator.app import run_orchestrator

    await run_orchestrator(cfg, config_file, ready_file)


async def _worker_main(cfg: Any, config_file: Path | None, ready_file: Path | None) -> None:
    from duplexd.tts.app import run_worker

    await run_worker(cfg, config_file, ready_file)


def _check_config(
    check: Callable[[Path | None, dict[str, Any]], tuple[BaseModel, list[str]]],
    config_file: Path | None,
    overrides: dict[str, Any],
) -> None:
    """`--check-config`: what start-up would refuse, found without binding or loading anything.
    The effective config goes to stdout as YAML (what it derives, as `#` comments after it)."""
    import yaml

    try:
        cfg, notes = check(config_file, overrides)
    except DuplexError as exc:
        print(f"duplexd: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    print(yaml.safe_dump(_masked(cfg.model_dump(mode="json")), sort_keys=False), end="")
    for note in notes:
        print(f"# {note}")


def _check_worker(
    config_file: Path | None, overrides: dict[str, Any]
) -> tuple[BaseModel, list[str]]:
    """The worker's start-up checks up to loading a model: bind safety, the catalog and its
    default model (fatal when missing), the preload ids (skipped with a warning), the address
    it would announce."""
    from duplexd.auth import ensure_safe_bind
    from duplexd.config import WorkerConfig, load_config, resolve_path
    from duplexd.tts.catalog import Catalog

    cfg = load_config(WorkerConfig, config_file, overrides=overrides)
    ensure_safe_bind(cfg.worker.host, cfg.auth.api_key, cfg.auth.allow_insecure_remote)
    mm = cfg.model_manager
    catalog = Catalog.load(
        resolve_path(mm.catalog, config_file),
        resolve_path(mm.voicepacks_dir, config_file),
        mm.effective_models_dir,
    )
    catalog.get(mm.default_model_id)
    for model_id in mm.preload_model_ids:
        if model_id not in catalog:
            print(f"duplexd: warning: preload model {model_id!r} is not in the catalog; "
                  "the worker will skip it", file=sys.stderr)  # fmt: skip
    notes = [f"serves gRPC on {cfg.worker.host}:{cfg.worker.port}"]
    if cfg.redis.url:
        from duplexd.fleet.announce import advertised_addr

        port = cfg.worker.port
        addr = advertised_addr(cfg.redis.advertise, cfg.worker.host, port)
        name = cfg.worker_name(port) if port or cfg.worker.name else "tts-HOST-PORT (bound port)"
        notes.append(f"announces itself as {name} at grpc://{addr}")
    return cfg, notes


def _check_orchestrator(
    config_file: Path | None, overrides: dict[str, Any]
) -> tuple[BaseModel, list[str]]:
    """The orchestrator's start-up checks before loading ASR: bind safety, the routing policy
    file and mode."""
    from duplexd.auth import ensure_safe_bind
    from duplexd.config import OrchestratorConfig, load_config, resolve_path
    from duplexd.orchestrator.routing import RoutingPolicy

    cfg = load_config(OrchestratorConfig, config_file, overrides=overrides)
    ensure_safe_bind(cfg.server.host, cfg.auth.api_key, cfg.auth.allow_insecure_remote)
    RoutingPolicy.load(resolve_path(cfg.routing.policy_file, config_file)).mode(cfg.routing.policy)
    return cfg, [f"serves HTTP and WebSocket on {cfg.server.host}:{cfg.server.port}"]


def _masked(data: dict[str, Any]) -> dict[str, Any]:
    """A config dump safe to print: keys and the Redis password replaced by ***."""
    from duplexd.fleet.keys import redact_url

    for section in ("auth", "llm"):
        if data.get(section, {}).get("api_key"):
            data[section]["api_key"] = "***"
    if data.get("redis", {}).get("url"):
        data["redis"]["url"] = redact_url(data["redis"]["url"])
    return data


devkit_app = typer.Typer(
    help="Developer kit: tiny models of the real architectures for CI and laptops.",
    no_args_is_help=True,
)
app.add_typer(devkit_app, name="devkit")


@devkit_app.command("tiny-model")
def tiny_model(
    kind: Annotated[str, typer.Argument(help="xtts | csm | csm-lora | spark | parler")],
    out: Annotated[
        Path | None,
        typer.Option(help="folder to write [$DUPLEX_MODELS_DIR/<catalog id of KIND>]"),
    ] = None,
    base: Annotated[
        Path | None, typer.Option(help="csm-lora: the base model folder the adapter fits")
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same weights)")] = 0,
) -> None:
    """Write a tiny randomly initialised model of KIND in its upstream on-disk layout."""
    from duplexd.config import WorkerConfig, load_config
    from duplexd.devkit.tiny import DEFAULT_IDS, build_tiny_model

    try:
        if out is None:
            if kind not in DEFAULT_IDS:
                build_tiny_model(kind, Path())  # raises the unknown-kind error
            models_dir = load_config(WorkerConfig, None).model_manager.effective_models_dir
            out = models_dir / DEFAULT_IDS[kind]
        written = build_tiny_model(kind, out, base=base, seed=seed)
    except DuplexError as exc:
        print(f"duplexd: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except ImportError as exc:
        need = (
            "its engine env: `bash scripts/engine-env.sh parler`, then run this command with "
            "`.venvs/parler/bin/duplexd`"
            if kind == "parler"
            else "its extra: `uv sync --extra ml` or `pip install 'duplex[ml]'`"
        )
        print(f"duplexd: error: {exc}; the tiny {kind} model needs {need}", file=sys.stderr)
        raise SystemExit(6) from None
    files = sorted(p.name for p in written.iterdir())
    print(f"wrote tiny {kind} model to {written}: {', '.join(files)}")


def _run(make: Any) -> None:
    """Run a daemon; a DuplexError ends it with its message and exit code, no traceback."""
    try:
        asyncio.run(make())
    except DuplexError as exc:
        from duplexd.logging import get_logger

        get_logger("duplexd").error("fatal", error=str(exc), status=exc.status)
        print(f"duplexd: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
