"""Choosing a worker and a model for a session (design section 6).

1. Filter by mode (`require` tags), language and sample rate.
2. Prefer resident models (then `prefer_tags`); then the lowest queue depth; then the best p50
   first-audio latency. With no model requested, a worker's default model is the choice.
3. A requested model that is not resident anywhere: fire an async LoadModel on the best worker
   that can load it (one already loading it first), and serve now from the best resident
   fallback (family `fallbacks` order first). A mode with ``prefer_resident: false`` waits for
   the requested model instead of serving from a fallback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from duplexd.errors import ConfigError, DaemonUnavailable, InvalidArgument, ModelNotFound
from duplexd.orchestrator.registry import WorkerHandle
from duplexd.rpc import tts_pb2 as pb

__all__ = ["ModePolicy", "Route", "RoutingPolicy", "choose"]


class ModePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    require: tuple[str, ...] = ()
    prefer_tags: tuple[str, ...] = ()
    prefer_resident: bool = True
    fallbacks: tuple[str, ...] = ()


class RoutingPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    modes: dict[str, ModePolicy] = {"default": ModePolicy()}

    @classmethod
    def load(cls, path: Path | None) -> RoutingPolicy:
        if path is None or not path.exists():
            return cls()
        try:
            data = yaml.safe_load(path.read_text()) or {}
            return cls(modes=data.get("routing", {}))
        except (yaml.YAMLError, ValidationError, AttributeError) as exc:
            raise ConfigError(f"{path}: invalid routing policy: {exc}") from None

    def mode(self, name: str) -> ModePolicy:
        if name not in self.modes:
            raise ConfigError(f"unknown routing mode {name!r}", hint=f"one of {list(self.modes)}")
        return self.modes[name]


@dataclass(frozen=True)
class Route:
    worker: WorkerHandle
    model_id: str
    fallback: bool = False  # serving from a fallback while `preload` loads the requested model
    preload: tuple[WorkerHandle, str] | None = field(default=None, compare=False)
    reason: str = ""


def _eligible(m: pb.ModelInfo, mode: ModePolicy, language: str | None) -> bool:
    """The mode's `require` tags, the language, and not known to be unloadable here."""
    return _fits(m, mode, language) and m.state != pb.UNAVAILABLE


def _fits(m: pb.ModelInfo, mode: ModePolicy, language: str | None) -> bool:
    if not set(mode.require) <= set(m.tags):
        return False
    if language and m.languages:
        lang = language.lower().split("-")[0]
        if not any(lang == x.lower().split("-")[0] for x in m.languages):
            return False
    return True


def _family_rank(m: pb.ModelInfo, mode: ModePolicy) -> int:
    return mode.fallbacks.index(m.family) if m.family in mode.fallbacks else len(mode.fallbacks)


def _score(w: WorkerHandle, m: pb.ModelInfo, mode: ModePolicy) -> tuple[float, ...]:
    """Lower is better: resident, preferred tags, queue depth, p50 first audio, family order."""
    preferred = -len(set(mode.prefer_tags) & set(m.tags))
    resident = 0 if (m.resident or not mode.prefer_resident) else 1
    return (resident, preferred, w.queue_depth, w.fal_p50_ms, _family_rank(m, mode))


def _fallback_score(w: WorkerHandle, m: pb.ModelInfo, mode: ModePolicy) -> tuple[float, ...]:
    """A stand-in while the requested model loads: the mode's `fallbacks` family order first."""
    preferred = -len(set(mode.prefer_tags) & set(m.tags))
    return (_family_rank(m, mode), preferred, w.queue_depth, w.fal_p50_ms)


def _load_score(w: WorkerHandle, m: pb.ModelInfo) -> tuple[float, ...]:
    """Where to load a cold model: a worker already loading it, then the least loaded."""
    return (0 if m.state == pb.LOADING else 1, w.queue_depth, w.fal_p50_ms, len(w.resident))


def choose(
    workers: list[WorkerHandle],
    policy: ModePolicy,
    *,
    model_id: str | None = None,
    language: str | None = None,
    sample_rate: int = 48_000,
) -> Route:
    """Pick (worker, model); raise if nothing healthy can serve."""
    healthy = [w for w in workers if w.healthy and (not w.caps or w.caps.audio.sr == sample_rate)]
    if not healthy:
        raise DaemonUnavailable("no healthy TTS worker", hint="start one: `duplexctl up`")
    if model_id:
        return _route_requested(healthy, policy, model_id, language)
    resident = [
        (w, m) for w in healthy for m in w.models if m.resident and _eligible(m, policy, language)
    ]
    # Without a `require`, a worker's own default model is what "no preference" means.
    defaults = [(w, m) for w, m in resident if m.is_default or policy.require]
    if defaults:
        w, m = min(defaults, key=lambda wm: _score(wm[0], wm[1], policy))
        return Route(w, m.id, reason="default model, least loaded worker")
    if resident:  # e.g. a language the default models do not speak
        w, m = min(resident, key=lambda wm: _score(wm[0], wm[1], policy))
        return Route(w, m.id, reason=f"resident {m.id} fits the mode and language")
    loadable = [(w, m) for w in healthy for m in w.models if _eligible(m, policy, language)]
    if not loadable:
        raise DaemonUnavailable(
            "no worker has a model for this routing mode and language",
            hint=_mode_hint(policy, language),
        )
    w, m = min(loadable, key=lambda wm: (_family_rank(wm[1], policy), *_load_score(*wm)))
    return Route(w, m.id, reason=f"nothing suitable resident: loading {m.id}")


def _mode_hint(policy: ModePolicy, language: str | None) -> str:
    needs = [f"tags {list(policy.require)}"] if policy.require else []
    needs += [f"language {language!r}"] if language else []
    return "needs a model with " + " and ".join(needs) if needs else "load a model on a worker"


def _route_requested(
    healthy: list[WorkerHandle], policy: ModePolicy, model_id: str, language: str | None
) -> Route:
    having = [(w, m) for w in healthy if (m := w.model(model_id)) is not None]
    if not having:
        raise ModelNotFound(f"no healthy worker offers model {model_id!r}")
    fitting = [(w, m) for w, m in having if _fits(m, policy, language)]
    if not fitting:
        raise InvalidArgument(
            f"model {model_id!r} does not suit this routing mode or language",
            hint=_mode_hint(policy, language),
        )
    resident = [(w, m) for w, m in fitting if m.resident]
    if resident:
        w, m = min(resident, key=lambda wm: _score(wm[0], wm[1], policy))
        return Route(w, m.id, reason="requested model resident")
    loadable = [(w, m) for w, m in fitting if m.state != pb.UNAVAILABLE]
    if not loadable:
        reasons = "; ".join(f"{w.name}: {m.unavailable_reason}" for w, m in fitting)
        raise ModelNotFound(f"model {model_id!r} cannot be loaded: {reasons}")
    target = min(loadable, key=lambda wm: _load_score(*wm))[0]
    fallbacks = [
        (w, m) for w in healthy for m in w.models if m.resident and _eligible(m, policy, language)
    ]
    if not fallbacks or not policy.prefer_resident:  # load it and wait for it
        why = "no fallback resident" if policy.prefer_resident else "mode prefers it cold"
        return Route(target, model_id, reason=f"loading requested model ({why})")
    w, m = min(fallbacks, key=lambda wm: _fallback_score(wm[0], wm[1], policy))
    return Route(
        w,
        m.id,
        fallback=True,
        preload=(target, model_id),
        reason=f"{model_id} loading on {target.name}; serving from {m.id}",
    )
