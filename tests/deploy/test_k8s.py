"""deploy/k8s without a cluster: every overlay renders (kubectl's kustomize), validates against
the Kubernetes schemas (kubernetes-validate, offline, strict), and every daemon command line in
it passes duplexd's own CLI and config (`--check-config`, in the environment the container would
have). Probes, ports, names, selectors and policies are checked against what the daemons serve,
and the preStop drain against a server; the last test asks real daemons for the probes' paths.

Not validated here: anything a cluster does (scheduling, DNS, the CNI enforcing the policies,
the HPA reading the Prometheus adapter). docs/scaling.md says so too.
"""

from __future__ import annotations

import importlib.util
import re
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from k8s_manifests import (
    K8S,
    OVERLAYS,
    REPO,
    USER_SECRETS,
    Daemon,
    Doc,
    check,
    daemon,
    daemons,
    find,
    fresh,
    image,
    of_kind,
    render,
    selects,
)
from kubernetes_validate.utils import (  # type: ignore[import-untyped]
    SchemaNotFoundError,
    ValidationError,
)

from duplexd.config import ENV_ALIASES, OrchestratorConfig, WorkerConfig
from duplexd.rpc import tts_pb2

# The newest Kubernetes schemas kubernetes-validate 1.37 bundles: nothing is downloaded.
K8S_VERSION = "1.37.0"
# The worker's gRPC health service: it reports its serving status under the TTS service's name.
HEALTH_SERVICE = tts_pb2.DESCRIPTOR.services_by_name["TTS"].full_name
# DUPLEX_* variables that are not config settings but that duplexd reads (config.repo_root).
NON_CONFIG_VARS = {"DUPLEX_HOME"}
MODELS = {"worker": WorkerConfig, "orchestrator": OrchestratorConfig}
SCALING_DOC = REPO / "docs" / "scaling.md"


def daemon_ids() -> list[tuple[str, str]]:
    return [(o, c) for o in OVERLAYS for c in ("worker", "orchestrator")]


# --- rendering and schemas ---------------------------------------------------------------------


def validate(doc: Doc) -> None:
    where = f"{doc['kind']}/{doc['metadata']['name']}"
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{where} is not valid Kubernetes {K8S_VERSION}: {path}: {exc.message}")
    except SchemaNotFoundError as exc:
        pytest.fail(f"{where}: {exc.message} (only core API kinds can be validated offline)")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {
        "Namespace", "ConfigMap", "Service", "StatefulSet", "Deployment", "PodDisruptionBudget",
        "NetworkPolicy",
    } <= kinds  # fmt: skip
    assert ("HorizontalPodAutoscaler" in kinds) == (overlay != "dev")  # dev has no Prometheus
    for doc in docs:
        validate(doc)
        ns = doc["metadata"].get("namespace", doc["metadata"]["name"])
        assert ns == "duplex", f"{doc['kind']}/{doc['metadata']['name']} is in {ns}"


def test_the_schema_check_is_strict() -> None:
    worker = daemon("gpu", "worker", render("gpu"))
    probe = worker.container["readinessProbe"]["grpc"]
    probe["servce"] = probe.pop("service")  # a misspelt field must not pass as "extra"
    with pytest.raises(ValidationError, match="servce"):
        kubernetes_validate.validate(worker.workload, K8S_VERSION, strict=True)


# --- the daemons' own CLI and config -------------------------------------------------------------


@pytest.mark.parametrize(("overlay", "command"), daemon_ids())
def test_command_line_passes_the_daemons_own_config_check(
    overlay: str, command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = daemon(overlay, command)
    result = check(d, tmp_path, monkeypatch)
    assert result.exit_code == 0, f"{d}: duplexd refused it:\n{result.stderr}{result.stdout}"
    assert "warning" not in result.stderr, result.stderr  # e.g. a preload id not in the catalog
    cfg = result.config
    assert cfg["redis"]["url"], "the fleet needs the Redis registry"
    if command == "orchestrator":
        assert cfg["workers"] == [], "workers come from the registry, not a static list"
        assert cfg["server"]["host"] == "0.0.0.0"
        return
    # The pod name is the fleet name, and the announced address is the pod's DNS name under the
    # StatefulSet's headless Service, with the port the worker serves on.
    sts = d.workload
    svc = find(d.docs, "Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None"
    assert selects(svc["spec"]["selector"], d.pod_labels)
    assert cfg["worker"]["name"] == d.pod_name == "duplex-worker-0"
    addr = f"{d.pod_name}.{svc['metadata']['name']}.{d.namespace}.svc:{cfg['worker']['port']}"
    assert f"announces itself as {d.pod_name} at grpc://{addr}" in result.notes
    # Pulled weights live on the pod's own persistent volume.
    (models,) = [m for m in d.container["volumeMounts"] if m["name"] == "models"]
    assert cfg["model_manager"]["models_dir"] == models["mountPath"]
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["models"]
    assert "models" not in {v["name"] for v in d.pod.get("volumes", [])}  # not an emptyDir
    preload = find(d.docs, "ConfigMap", _configmap_of(d, "DUPLEX_MODEL_MANAGER__PRELOAD_MODEL_IDS"))
    assert cfg["model_manager"]["preload_model_ids"] == _yaml_list(
        preload["data"]["preload-models"]
    )


def _configmap_of(d: Daemon, var: str) -> str:
    (env,) = [e for e in d.container["env"] if e["name"] == var]
    return str(env["valueFrom"]["configMapKeyRef"]["name"])


def _yaml_list(text: str) -> list[str]:
    import yaml

    value = yaml.safe_load(text)
    assert isinstance(value, list)
    return [str(v) for v in value]


def _rename_arg(d: Daemon, old: str, new: str) -> None:
    assert old in d.container["args"]
    d.container["args"] = [new if a == old else a for a in d.container["args"]]


def _rename_env(d: Daemon, old: str, new: str) -> None:
    (var,) = [e for e in d.container["env"] if e["name"] == old]
    var["name"] = new


def _set_env(d: Daemon, name: str, value: str) -> None:
    (var,) = [e for e in d.container["env"] if e["name"] == name]
    var["value"] = value


def _drop_env(d: Daemon, name: str) -> None:
    d.container["env"] = [e for e in d.container["env"] if e["name"] != name]


# name: (daemon, how the manifest is broken, what duplexd answers)
MUTATIONS: dict[str, tuple[str, Callable[[Daemon], None], str]] = {
    "renamed --config": (
        "worker", lambda d: _rename_arg(d, "--config", "--config-file"), "No such option",
    ),
    "renamed --log-level": (
        "orchestrator", lambda d: _rename_arg(d, "--log-level", "--loglevel"), "No such option",
    ),
    "renamed setting": (
        "worker", lambda d: _rename_env(d, "DUPLEX_WORKER__NAME", "DUPLEX_WORKER__ID"),
        "worker.id: Extra inputs are not permitted",
    ),
    "bad advertise": (
        "worker", lambda d: _set_env(d, "DUPLEX_REDIS__ADVERTISE", "$(POD_NAME):x"),
        "the port must be a number",
    ),
    "no API key": (
        "orchestrator", lambda d: _drop_env(d, "DUPLEX_API_KEY"),
        "refusing to bind 0.0.0.0 without an API key",
    ),
}  # fmt: skip


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_a_renamed_flag_or_bad_setting_fails_the_check(
    mutation: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the previous test would meet if the manifests and the daemons drifted apart.
    command, breaks, answer = MUTATIONS[mutation]
    d = fresh("cpu", command)
    assert check(d, tmp_path / "intact", monkeypatch).exit_code == 0
    breaks(d)
    result = check(d, tmp_path / "broken", monkeypatch)
    assert result.exit_code == 2, f"{mutation}: duplexd accepted it:\n{result.stdout}"
    assert answer in result.stderr


def unknown_settings(env: dict[str, str], model: type[Any]) -> list[str]:
    """DUPLEX_* names that are no config setting. load_config only reads DUPLEX_<SECTION>__<KEY>
    for sections it knows, so a misspelt *section* would be ignored silently, not refused."""
    unknown = []
    for name in env:
        if not name.startswith("DUPLEX_") or name in ENV_ALIASES or name in NON_CONFIG_VARS:
            continue
        section, _, key = name.removeprefix("DUPLEX_").lower().partition("__")
        field = model.model_fields.get(section)
        sub = getattr(field, "annotation", None)
        if field is None or not key or key not in getattr(sub, "model_fields", {}):
            unknown.append(name)
    return unknown


@pytest.mark.parametrize(("overlay", "command"), daemon_ids())
def test_every_duplex_variable_is_a_config_setting(overlay: str, command: str) -> None:
    d = daemon(overlay, command)
    assert unknown_settings(d.process_env(), MODELS[command]) == []
    wrong = {"DUPLEX_WROKER__NAME": "x", "DUPLEX_MODEL_MANAGER__PRELOAD": "x", "DUPLEX_API": "x"}
    assert unknown_settings(wrong, MODELS[command]) == list(wrong)


# --- probes, ports and the objects around the pods -----------------------------------------------


@pytest.mark.parametrize(("overlay", "command"), daemon_ids())
def test_probes_and_ports_match_what_the_daemon_serves(
    overlay: str, command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = daemon(overlay, command)
    cfg = check(d, tmp_path, monkeypatch).config
    probes = {k: d.container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    if command == "worker":
        for probe in probes.values():
            assert probe["grpc"] == {"port": cfg["worker"]["port"], "service": HEALTH_SERVICE}
        assert d.port("grpc") == cfg["worker"]["port"]
        assert d.port("metrics") == cfg["worker"]["metrics_port"]
        assert d.pod_annotations["prometheus.io/port"] == str(cfg["worker"]["metrics_port"])
    else:
        paths = {k: p["httpGet"]["path"] for k, p in probes.items()}
        assert paths == {"startupProbe": "/healthz", "readinessProbe": "/readyz",
                         "livenessProbe": "/healthz"}  # fmt: skip
        for probe in probes.values():
            assert d.port(probe["httpGet"]["port"]) == cfg["server"]["port"]
        assert d.pod_annotations["prometheus.io/port"] == str(cfg["server"]["port"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_budgets_and_autoscaler_select_their_pods(overlay: str) -> None:
    docs = render(overlay)
    pods = {d.command: d for d in daemons(overlay, docs)}
    for svc in of_kind(docs, "Service"):
        component = svc["metadata"]["labels"]["app.kubernetes.io/component"]
        if component not in pods:
            continue  # dev's Redis
        d = pods[component]
        assert selects(svc["spec"]["selector"], d.pod_labels), svc["metadata"]["name"]
        for port in svc["spec"]["ports"]:
            assert d.port(port["targetPort"]) == port["port"]
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        selected = [c for c, d in pods.items() if selects(pdb["spec"]["selector"]["matchLabels"],
                                                          d.pod_labels)]  # fmt: skip
        assert selected == [pdb["metadata"]["labels"]["app.kubernetes.io/component"]]
    orch = pods["orchestrator"].workload
    assert orch["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["kind"], ref["name"]) == ("Deployment", orch["metadata"]["name"])
        assert "replicas" not in orch["spec"], "the HPA owns the replica count"


def test_autoscaler_metric_is_the_orchestrators_session_gauge() -> None:
    from duplexd.orchestrator.telemetry import OrchTelemetry

    (hpa,) = of_kind(render("cpu"), "HorizontalPodAutoscaler")
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    served = {metric.name for metric in OrchTelemetry().registry.collect()}
    assert names == ["duplex_orch_sessions"]
    assert set(names) <= served
    assert names[0] == load_drain().METRIC  # the preStop waits on the same number
    assert "duplex_orch_sessions" in SCALING_DOC.read_text()  # the adapter rule names it


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_only_orchestrators_reach_workers(overlay: str) -> None:
    docs = render(overlay)
    pods = {d.command: d for d in daemons(overlay, docs)}
    worker, orch = pods["worker"], pods["orchestrator"]
    selectors = [p["spec"]["podSelector"]["matchLabels"] for p in of_kind(docs, "NetworkPolicy")]
    for d in pods.values():  # every daemon pod is isolated: nothing reaches it by default
        assert any(selects(s, d.pod_labels) for s in selectors)

    def rules(name: str, target: Daemon) -> list[tuple[str, dict[str, str], int]]:
        """(peer kind, its labels, port number on the target pods) of each ingress rule."""
        spec = find(docs, "NetworkPolicy", name)["spec"]
        assert selects(spec["podSelector"]["matchLabels"], target.pod_labels)
        out = []
        for rule in spec["ingress"]:
            assert rule.get("from") and rule.get("ports"), "a rule without from/ports admits all"
            for peer in rule["from"]:
                ((kind, selector),) = peer.items()
                labels = selector["matchLabels"]
                out += [(kind, labels, target.port(p["port"])) for p in rule["ports"]]
        return out

    to_workers = rules("duplex-worker", worker)
    assert {(kind, port) for kind, _, port in to_workers} == {
        ("podSelector", worker.port("grpc")), ("namespaceSelector", worker.port("metrics")),
    }  # fmt: skip
    for kind, labels, _ in to_workers:
        if kind == "podSelector":  # orchestrators, and not other workers
            assert selects(labels, orch.pod_labels) and not selects(labels, worker.pod_labels)
        else:
            assert labels == {"duplex-metrics": "true"}
    to_orchestrators = rules("duplex-orchestrator", orch)
    assert sorted((k, str(labels), port) for k, labels, port in to_orchestrators) == [
        ("namespaceSelector", str({"duplex-edge": "true"}), orch.port("http")),
        ("namespaceSelector", str({"duplex-metrics": "true"}), orch.port("http")),
    ]
    text = SCALING_DOC.read_text()
    assert "duplex-edge=true" in text and "duplex-metrics=true" in text


# --- per overlay ---------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_get_a_gpu_only_in_the_gpu_overlay(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = daemon(overlay, "worker")
    cfg = check(d, tmp_path, monkeypatch).config
    res = d.container["resources"]
    built = image(d.container["image"])
    if overlay == "gpu":
        assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == "1"
        assert cfg["worker"]["device"] == "cuda:0"  # the one GPU the pod sees
        assert d.pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert ("VARIANT=gpu" in built.build_args) and built.name == "duplex-tts-gpu"
    else:
        assert "nvidia.com/gpu" not in {**res.get("limits", {}), **res.get("requests", {})}
        assert cfg["worker"]["device"] == "cpu"
        assert built.name == "duplex-tts" and not built.build_args
    replicas = d.workload["spec"]["replicas"]
    assert replicas == (1 if overlay == "dev" else 2)


def test_dev_overlay_runs_its_own_redis_and_the_others_expect_one() -> None:
    dev = render("dev")
    redis = find(dev, "StatefulSet", "duplex-redis")
    assert redis["spec"]["replicas"] == 1
    (secret,) = of_kind(dev, "Secret")
    svc = find(dev, "Service", "duplex-redis")
    worker = daemon("dev", "worker", dev)
    url = worker.manifest_env()["DUPLEX_REDIS_URL"]
    assert url == f"redis://{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}/0"
    assert secret["metadata"]["name"].startswith("duplex-redis")
    policy = find(dev, "NetworkPolicy", "duplex-redis")["spec"]
    sources = [p["podSelector"]["matchLabels"] for p in policy["ingress"][0]["from"]]
    for d in daemons("dev", dev):  # both daemons may reach it, and only they
        assert any(selects(s, d.pod_labels) for s in sources)
    assert not any(selects(s, redis["spec"]["template"]["metadata"]["labels"]) for s in sources)
    for overlay in ("cpu", "gpu"):
        docs = render(overlay)
        assert of_kind(docs, "Secret") == []  # no credentials in the manifests
        assert not [d for d in of_kind(docs, "StatefulSet") if "redis" in d["metadata"]["name"]]


def test_user_created_secrets_are_documented() -> None:
    text = SCALING_DOC.read_text()
    for name, key in USER_SECRETS:
        assert re.search(rf"create secret generic {name} --from-literal={key}=", text), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_unprivileged_with_requests_from_the_measurements(overlay: str) -> None:
    docs = render(overlay)
    for workload in of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet"):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["enableServiceLinks"] is False  # no DUPLEX_*_PORT=tcp://… from Services
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), workload["metadata"]
            assert "memory" in c["resources"]["limits"]
    for d in daemons(overlay, docs):
        if d.command == "worker":  # uid 10001 is the images' `duplex` user, owner of /models
            assert "--uid 10001" in d.image().dockerfile.read_text()
        assert d.pod["securityContext"]["runAsUser"] == 10001


# --- graceful drain: the preStop hook --------------------------------------------------------


def load_drain() -> ModuleType:
    path = K8S / "base" / "orchestrator" / "drain.py"
    spec = importlib.util.spec_from_file_location("duplex_k8s_drain", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prestop_waits_within_the_grace_period_on_the_daemons_port(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = daemon(overlay, "orchestrator")
    cfg = check(d, tmp_path, monkeypatch).config
    command = d.container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "python" and "/opt/venv/bin" in d.image().env["PATH"]
    script = dict(d.mounted_files())[command[1]]
    assert script == (K8S / "base" / "orchestrator" / "drain.py").read_text()
    args = load_drain().parse_args(command[2:])
    assert args.port == cfg["server"]["port"]
    assert args.min_wait >= 3  # endpoints, kube-proxy and the gateway must stop sending first
    # After the preStop, SIGTERM: the daemon's own drain needs its grace, then a margin.
    daemon_grace = float(cfg["server"].get("shutdown_grace_s", 3))
    assert args.max_wait + daemon_grace + 5 <= d.pod["terminationGracePeriodSeconds"]


class _FakeMetrics:
    """A /metrics that serves `duplex_orch_sessions` from a schedule of (after_s, value)."""

    def __init__(self, schedule: list[tuple[float, int]]) -> None:
        self.start = time.monotonic()
        self.schedule = schedule
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                now = time.monotonic() - fake.start
                value = [v for t, v in fake.schedule if t <= now][-1]
                body = f"# TYPE duplex_orch_sessions gauge\nduplex_orch_sessions {value}.0\n"
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_metrics() -> Iterator[type[_FakeMetrics]]:
    made: list[_FakeMetrics] = []

    class Made(_FakeMetrics):
        def __init__(self, schedule: list[tuple[float, int]]) -> None:
            super().__init__(schedule)
            made.append(self)

    yield Made
    for server in made:
        server.close()


def test_drain_returns_once_the_sessions_have_ended(fake_metrics: type[_FakeMetrics]) -> None:
    drain = load_drain()
    server = fake_metrics([(0.0, 2), (0.6, 0)])
    t0 = time.monotonic()
    why = drain.drain(server.port, min_wait_s=0.2, max_wait_s=10, poll_s=0.05)
    assert 0.6 <= time.monotonic() - t0 < 2.0
    assert why.startswith("no open sessions")


def test_drain_waits_the_minimum_even_when_idle(fake_metrics: type[_FakeMetrics]) -> None:
    server = fake_metrics([(0.0, 0)])
    t0 = time.monotonic()
    load_drain().drain(server.port, min_wait_s=0.5, max_wait_s=10, poll_s=0.05)
    assert 0.5 <= time.monotonic() - t0 < 1.5


def test_drain_gives_up_at_the_maximum(fake_metrics: type[_FakeMetrics]) -> None:
    server = fake_metrics([(0.0, 3)])
    t0 = time.monotonic()
    why = load_drain().drain(server.port, min_wait_s=0.1, max_wait_s=0.6, poll_s=0.05)
    assert 0.6 <= time.monotonic() - t0 < 1.5
    assert why.startswith("3 sessions still open")


def test_drain_does_not_wait_for_a_daemon_that_does_not_answer() -> None:
    from duplexd.devkit.procs import free_port

    t0 = time.monotonic()
    why = load_drain().drain(free_port(), min_wait_s=0.2, max_wait_s=30, poll_s=0.05)
    assert time.monotonic() - t0 < 3 and "does not answer" in why


def test_drain_refuses_a_maximum_below_the_minimum() -> None:
    with pytest.raises(SystemExit):
        load_drain().parse_args(["--port", "8080", "--min-wait", "10", "--max-wait", "5"])


# --- the probes, asked of real daemons -----------------------------------------------------------


@pytest.mark.integration
def test_real_daemons_answer_the_manifests_probes(tmp_path: Path) -> None:
    """The paths and gRPC service the manifests probe, asked of a real worker and orchestrator
    (on free loopback ports: that the ports agree is the static test's part)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from duplexd.devkit.procs import daemon as run

    worker, orch = daemon("cpu", "worker"), daemon("cpu", "orchestrator")
    fast = ["--adapter", "espeak", "--default-model", "espeak-en"]  # loads in milliseconds
    with run("worker", tmp_path / "w", fast) as w:
        with grpc.insecure_channel(w.addr) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                service = worker.container[kind]["grpc"]["service"]
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, kind
        with run("orchestrator", tmp_path / "o", ["--worker", f"w={w.addr}"]) as o:
            base = f"http://127.0.0.1:{o.port}"
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                path = orch.container[kind]["httpGet"]["path"]
                assert _get_200(base + path), f"{kind} {path} never answered 200"
            drain = load_drain()
            assert drain.open_sessions(o.port) == 0  # the gauge the preStop and the HPA read
            assert drain.drain(o.port, 0, 5, 0.1).startswith("no open sessions")


def _get_200(url: str, timeout_s: float = 15.0) -> bool:
    """/readyz turns 200 once the orchestrator has polled its worker: allow it a moment."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3) as reply:
                if reply.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def test_the_console_script_is_the_cli_the_checks_run() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["duplexd"] == "duplexd.cli:main"
