"""Choosing a worker and a model for a session (design section 6).

1. Filter by mode (`require` tags), language and sample rate.
2. Prefer resident models; then the lowest queue depth; then the best p50 first-audio latency.
3. A requested model that is not resident anywhere: fire an async LoadModel on the best worker
   that can load it, and serve now from the best resident fallback (family `fallbacks` order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from duplexd.errors import ConfigError, DaemonUnavailable, ModelNotFound
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
    if not set(mode.require) <= set(m.tags):
        return False
    if language and m.languages:
        lang = language.lower().split("-")[0]
        if not any(lang == x.lower().split("-")[0] for x in m.languages):
            return False
    return m.state != pb.UNAVAILABLE


def _score(w: WorkerHandle, m: pb.ModelInfo, mode: ModePolicy) -> tuple[float, ...]:
    family_rank = mode.fallbacks.index(m.family) if m.family in mode.fallbacks else 99
    preferred = -len(set(mode.prefer_tags) & set(m.tags))
    resident = 0 if (m.resident or not mode.prefer_resident) else 1
    return (resident, preferred, w.queue_depth, w.fal_p50_ms, family_rank)


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
    options = [
        (w, m)
        for w in healthy
        for m in w.models
        if m.resident and (m.is_default or policy.require) and _eligible(m, policy, language)
    ]
    if not options:
        raise DaemonUnavailable("no worker has a suitable resident model")
    w, m = min(options, key=lambda wm: _score(wm[0], wm[1], policy))
    return Route(w, m.id, reason="default model, least loaded worker")


def _route_requested(
    healthy: list[WorkerHandle], policy: ModePolicy, model_id: str, language: str | None
) -> Route:
    having = [(w, m) for w in healthy if (m := w.model(model_id)) is not None]
    if not having:
        raise ModelNotFound(f"no healthy worker offers model {model_id!r}")
    resident = [(w, m) for w, m in having if m.resident]
    if resident:
        w, m = min(resident, key=lambda wm: _score(wm[0], wm[1], policy))
        return Route(w, m.id, reason="requested model resident")
    loadable = [(w, m) for w, m in having if m.state != pb.UNAVAILABLE]
    if not loadable:
        reasons = "; ".join(f"{w.name}: {m.unavailable_reason}" for w, m in having)
        raise ModelNotFound(f"model {model_id!r} cannot be loaded: {reasons}")
    target = min(loadable, key=lambda wm: (wm[0].queue_depth, wm[0].fal_p50_ms))[0]
    fallbacks = [
        (w, m) for w in healthy for m in w.models if m.resident and _eligible(m, policy, language)
    ]
    if not fallbacks:  # nothing to serve from meanwhile: load it and wait
        return Route(target, model_id, reason="loading requested model (no fallback resident)")
    w, m = min(fallbacks, key=lambda wm: _score(wm[0], wm[1], policy))
    return Route(
        w,
        m.id,
        fallback=True,
        preload=(target, model_id),
        reason=f"{model_id} loading on {target.name}; serving from {m.id}",
    )
