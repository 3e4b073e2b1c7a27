# duplex developer recipes. `just --list` shows them all.
set shell := ["bash", "-eu", "-o", "pipefail", "-c"]

uv := env("UV", "python3 -m uv")
run := uv + " run --frozen"

# List recipes
default:
    @just --list

# Install system packages, uv and the locked dev environment
setup:
    bash scripts/setup.sh --dev

# ===== Quality =====

# Lint (ruff check + format check)
lint:
    {{run}} ruff check .
    {{run}} ruff format --check .

# Auto-fix lint and formatting
fix:
    {{run}} ruff check . --fix
    {{run}} ruff format .

# Type-check (mypy strict)
typecheck:
    {{run}} mypy

# Run the test suite (extra args go to pytest)
test *ARGS:
    {{run}} pytest {{ARGS}}

# Lint + typecheck + test: what CI runs
ci: lint typecheck test

# ===== Generators =====

# Regenerate the gRPC modules and typed stubs from src/duplexd/rpc/tts.proto
gen-proto:
    {{run}} bash scripts/gen_proto.sh

# ===== Runtime =====

# Run a TTS worker (extra flags go to `duplexd worker`)
run-worker *FLAGS:
    {{run}} duplexd worker --config configs/worker.yaml {{FLAGS}}

# Run the orchestrator (extra flags go to `duplexd orchestrator`)
run-orch *FLAGS:
    {{run}} duplexd orchestrator --config configs/orchestrator.yaml {{FLAGS}}

# The spoken demo conversation (writes demo.wav)
demo *FLAGS:
    {{run}} duplexctl demo {{FLAGS}}

# Benchmarks (writes JSON; see docs/benchmarks.md)
bench *FLAGS:
    {{run}} duplexctl bench {{FLAGS}}

# A local Redis for fleet mode (apt redis-server), in the foreground
redis PORT="6379":
    redis-server --port {{PORT}} --save "" --appendonly no

# ===== Containers =====

# Build the container images with podman or docker (default: orchestrator tts tts-isolated tts-cosyvoice; `all` adds tts-gpu and redis)
containers *IMAGES:
    bash scripts/containers_build.sh {{IMAGES}}

# Build, bring the compose stack up under podman-compose, talk through it, kill/restore a worker, tear down
containers-test:
    bash scripts/containers_test.sh

# ===== Kubernetes (deploy/k8s, docs/scaling.md) =====

# Render a deploy/k8s overlay (cpu | gpu | dev) as `kubectl apply -k` would apply it
k8s-render OVERLAY="cpu":
    {{run}} kubectl kustomize deploy/k8s/overlays/{{OVERLAY}}

# Check deploy/k8s without a cluster: render, Kubernetes schemas, the daemons' CLI and config, probes
k8s-check:
    {{run}} pytest tests/deploy -q

# Measure the daemons' memory and CPU the manifests request (starts a worker and an orchestrator)
k8s-measure *FLAGS:
    {{run}} python deploy/k8s/measure.py {{FLAGS}}
