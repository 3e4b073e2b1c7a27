"""The routing policy table (design section 6): modes from configs/routing.yaml, filters,
resident preference, queue depth, p50, preload-on-miss with family fallbacks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from duplexd.config import repo_root
from duplexd.errors import ConfigError, DaemonUnavailable, InvalidArgument, ModelNotFound
from duplexd.orchestrator.registry import WorkerHandle
from duplexd.orchestrator.routing import ModePolicy, RoutingPolicy, choose
from duplexd.rpc import tts_pb2 as pb

POLICY = RoutingPolicy.load(repo_root() / "configs" / "routing.yaml")

PIPER = {"family": "piper", "tags": ["cpu_ok", "edge", "low-jitter"]}
ESPEAK = {"family": "espeak", "tags": ["cpu_ok", "edge", "fallback"]}
COSY = {"family": "cosyvoice2", "tags": ["expressive", "zero_shot"], "languages": ["zh", "en"]}
XTTS = {"family": "xtts-v2", "tags": ["expressive", "lora"], "languages": ["en", "de"]}

_STATE = {"resident": pb.RESIDENT, "cold": pb.NOT_LOADED, "loading": pb.LOADING,
          "unavailable": pb.UNAVAILABLE}  # fmt: skip


def model(model_id: str, kind: dict[str, Any], state: str = "resident", *, default: bool = False
          ) -> pb.ModelInfo:  # fmt: skip
    return pb.ModelInfo(
        id=model_id, family=kind["family"], state=_STATE[state], resident=state == "resident",
        is_default=default, tags=kind["tags"], languages=kind.get("languages", ["en"]),
        unavailable_reason="needs a GPU" if state == "unavailable" else "",
    )  # fmt: skip


def worker(name: str, *models: pb.ModelInfo, queue: int = 0, p50: float = 0.0,
           healthy: bool = True, sr: int = 48_000) -> WorkerHandle:  # fmt: skip
    caps = pb.GetCapResp(
        worker_name=name,
        audio=pb.AudioSpec(sr=sr, frame_ms=20),
        metrics=pb.WorkerMetrics(queue_depth=queue, fal_p50_ms=p50),
    )
    handle = WorkerHandle(name, f"{name}:7001", client=None, healthy=healthy, caps=caps)  # type: ignore[arg-type]
    handle.models = list(models)
    return handle


def fleet() -> list[WorkerHandle]:
    """A: piper + espeak resident, idle, p50 80. B: piper, busy (queue 2) but fast (p50 60),
    espeak cold. C: piper, idle, slow (p50 120), cosyvoice2 (zh+en) cold."""
    return [
        worker("A", model("piper-joe", PIPER, default=True), model("espeak-en", ESPEAK),
               queue=0, p50=80),
        worker("B", model("piper-joe", PIPER, default=True), model("espeak-en", ESPEAK, "cold"),
               queue=2, p50=60),
        worker("C", model("piper-joe", PIPER, default=True), model("cosy-zh", COSY, "cold"),
               queue=0, p50=120),
    ]  # fmt: skip


@dataclass(frozen=True)
class Case:
    mode: str
    model_id: str | None
    language: str | None
    worker: str
    model: str
    fallback: bool = False
    preload: tuple[str, str] | None = None


TABLE: dict[str, Case] = {
    # default mode: a worker's default model; lowest queue depth wins over a better p50 ...
    "default: least loaded worker": Case("default", None, None, "A", "piper-joe"),
    # ... the requested model where it is resident, even if another worker is faster
    "requested resident": Case("default", "espeak-en", None, "A", "espeak-en"),
    # cold everywhere: LoadModel on C (the only one offering it), serve from the first fallback
    # family (piper, before espeak) on the least loaded worker meanwhile
    "preload on miss": Case("default", "cosy-zh", None, "A", "piper-joe", True, ("C", "cosy-zh")),
    # the language filter: nothing resident speaks zh, so the zh model is loaded and used
    "language zh": Case("default", None, "zh", "C", "cosy-zh"),
    "language with region": Case("default", None, "en-US", "A", "piper-joe"),
    # edge: only cpu_ok models; every resident one competes, the family order breaks the tie
    "edge: least loaded, piper first": Case("edge", None, None, "A", "piper-joe"),
    "edge: requested cpu model": Case("edge", "espeak-en", None, "A", "espeak-en"),
}


@pytest.mark.parametrize("name", list(TABLE))
def test_policy_table(name: str) -> None:
    case = TABLE[name]
    route = choose(fleet(), POLICY.mode(case.mode), model_id=case.model_id,
                   language=case.language)  # fmt: skip
    got_preload = (route.preload[0].name, route.preload[1]) if route.preload else None
    got = (route.worker.name, route.model_id, route.fallback, got_preload)
    assert got == (case.worker, case.model, case.fallback, case.preload), route.reason


def test_policy_file_modes() -> None:
    assert set(POLICY.modes) == {"default", "edge", "lora"}
    default, edge, lora = (POLICY.mode(m) for m in ("default", "edge", "lora"))
    assert default.prefer_resident and default.prefer_tags == ("expressive", "low-jitter")
    assert default.fallbacks == ("piper", "espeak") and not default.require
    assert edge.require == ("cpu_ok",) and edge.fallbacks == ("piper", "espeak")
    assert lora.require == ("lora",) and lora.prefer_resident and not lora.fallbacks
    with pytest.raises(ConfigError, match="unknown routing mode 'studio'"):
        POLICY.mode("studio")


def test_policy_file_errors(tmp_path: Path) -> None:
    assert RoutingPolicy.load(tmp_path / "missing.yaml").modes == {"default": ModePolicy()}
    bad = tmp_path / "bad.yaml"
    bad.write_text("routing:\n  default:\n    prefer_tagz: [x]\n")
    with pytest.raises(ConfigError, match="invalid routing policy"):
        RoutingPolicy.load(bad)


def test_queue_depth_before_p50_before_family() -> None:
    edge = POLICY.mode("edge")
    busy_fast = worker("fast", model("piper-joe", PIPER, default=True), queue=1, p50=10)
    idle_slow = worker("slow", model("piper-joe", PIPER, default=True), queue=0, p50=300)
    assert choose([busy_fast, idle_slow], edge).worker.name == "slow"
    idle_fast = worker("fast2", model("espeak-en", ESPEAK, default=True), queue=0, p50=50)
    assert choose([idle_slow, idle_fast], edge).worker.name == "fast2"  # p50 before family
    same = worker("same", model("espeak-en", ESPEAK), model("piper-joe", PIPER), p50=50)
    assert choose([same], edge).model_id == "piper-joe"  # all equal: family order


def test_prefer_tags_beat_queue_depth() -> None:
    plain = worker("plain", model("espeak-en", ESPEAK, default=True), queue=0)  # no tag
    cosy = model("cosy-en", COSY, default=True)
    expressive = worker("expressive", cosy, queue=3, p50=200)
    route = choose([plain, expressive], POLICY.mode("default"))
    assert (route.worker.name, route.model_id) == ("expressive", "cosy-en")
    low_jitter = worker("lj", model("piper-joe", PIPER, default=True), queue=0)  # one tag too
    assert choose([low_jitter, expressive], POLICY.mode("default")).worker.name == "lj"


def test_preload_goes_to_the_worker_already_loading() -> None:
    a = worker("A", model("piper-joe", PIPER, default=True), model("cosy-zh", COSY, "cold"))
    b = worker("B", model("piper-joe", PIPER, default=True), model("cosy-zh", COSY, "loading"),
               queue=4)  # fmt: skip
    route = choose([a, b], POLICY.mode("default"), model_id="cosy-zh")
    assert route.fallback and route.preload is not None and route.preload[0].name == "B"
    assert route.worker.name == "A" and route.model_id == "piper-joe"


def test_fallback_follows_family_order_not_load() -> None:
    espeak_idle = worker("E", model("espeak-en", ESPEAK, default=True), queue=0, p50=10)
    piper = model("piper-joe", PIPER, default=True)
    piper_busy = worker("P", piper, model("cosy-zh", COSY, "cold"), queue=3, p50=90)
    route = choose([espeak_idle, piper_busy], POLICY.mode("default"), model_id="cosy-zh")
    assert (route.worker.name, route.model_id, route.fallback) == ("P", "piper-joe", True)


def test_prefer_resident_false_waits_for_the_requested_model() -> None:
    mode = POLICY.mode("default").model_copy(update={"prefer_resident": False})
    route = choose(fleet(), mode, model_id="cosy-zh")
    got = (route.worker.name, route.model_id, route.fallback, route.preload)
    assert got == ("C", "cosy-zh", False, None)


def test_no_fallback_resident_loads_and_waits() -> None:
    lone = worker("L", model("cosy-zh", COSY, "cold"), model("espeak-en", ESPEAK, "cold"))
    route = choose([lone], POLICY.mode("default"), model_id="cosy-zh")
    assert (route.worker.name, route.model_id, route.fallback) == ("L", "cosy-zh", False)


def test_lora_mode() -> None:
    lora = POLICY.mode("lora")
    with pytest.raises(DaemonUnavailable, match="no worker has a model for this routing mode"):
        choose(fleet(), lora)
    gpu = worker("G", model("piper-joe", PIPER, default=True), model("xtts-en", XTTS, "cold"))
    route = choose([*fleet(), gpu], lora)
    assert (route.worker.name, route.model_id) == ("G", "xtts-en")  # loaded on demand
    with pytest.raises(InvalidArgument, match="does not suit this routing mode"):
        choose([*fleet(), gpu], lora, model_id="piper-joe")
    gpu.models[1] = model("xtts-en", XTTS, "resident")
    route = choose([*fleet(), gpu], lora, language="de")
    assert (route.worker.name, route.model_id) == ("G", "xtts-en")


def test_edge_refuses_gpu_models() -> None:
    with pytest.raises(InvalidArgument, match="needs a model with tags \\['cpu_ok'\\]"):
        choose(fleet(), POLICY.mode("edge"), model_id="cosy-zh")


def test_filters_health_and_sample_rate() -> None:
    sick = worker("sick", model("espeak-en", ESPEAK, default=True), healthy=False)
    odd_rate = worker("24k", model("espeak-en", ESPEAK, default=True), sr=24_000)
    ok = worker("ok", model("piper-joe", PIPER, default=True), queue=9, p50=999)
    assert choose([sick, odd_rate, ok], POLICY.mode("edge")).worker.name == "ok"
    with pytest.raises(DaemonUnavailable, match="no healthy TTS worker"):
        choose([sick], POLICY.mode("default"))
    with pytest.raises(DaemonUnavailable, match="no healthy TTS worker"):
        choose([odd_rate], POLICY.mode("default"))


def test_unknown_and_unloadable_models() -> None:
    with pytest.raises(ModelNotFound, match="no healthy worker offers model 'nope'"):
        choose(fleet(), POLICY.mode("default"), model_id="nope")
    gpu_only = worker("X", model("piper-joe", PIPER, default=True),
                      model("cosy-zh", COSY, "unavailable"))  # fmt: skip
    with pytest.raises(ModelNotFound, match="cannot be loaded: X: needs a GPU"):
        choose([gpu_only], POLICY.mode("default"), model_id="cosy-zh")


def test_language_the_requested_model_lacks() -> None:
    with pytest.raises(InvalidArgument, match="language 'de'"):
        choose(fleet(), POLICY.mode("default"), model_id="espeak-en", language="de")
