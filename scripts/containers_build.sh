#!/usr/bin/env bash
# Build duplex's container images with podman (or docker), reusing cached layers.
#
#   scripts/containers_build.sh                      orchestrator tts tts-isolated tts-cosyvoice
#   scripts/containers_build.sh tts orchestrator     just those
#   scripts/containers_build.sh all                  + tts-gpu (torch + CUDA, ~6 GB) and redis
#
# Images: ${DUPLEX_IMAGE_PREFIX:-duplex}-<name>:${DUPLEX_TAG:-latest}
#   orchestrator   docker/orchestrator.Dockerfile
#   tts            docker/tts.Dockerfile (CPU)
#   tts-gpu        docker/tts.Dockerfile --build-arg VARIANT=gpu
#   tts-isolated   docker/tts-cosyvoice.Dockerfile --target isolated-espeak (second environment)
#   tts-cosyvoice  docker/tts-cosyvoice.Dockerfile --target cosyvoice (CosyVoice 2, ~6 GB)
#   redis          docker/redis.Dockerfile (Debian's redis-server, for hosts without Docker Hub)
#
# Environment: CONTAINER_ENGINE=podman|docker (default: podman when installed), BASE (default
# python:3.11-slim-bookworm; CI passes localhost/debian-python:bookworm), DUPLEX_IMAGE_PREFIX,
# DUPLEX_TAG, BUILD_ARGS (extra flags for every build). With podman, builds use the host network
# and mount the host's CA bundle into RUN steps (never baked in): what sandboxes with a TLS proxy
# need, harmless elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[containers]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[containers] error:\033[0m %s\n' "$*" >&2; exit 1; }

engine=${CONTAINER_ENGINE:-}
if [[ -z $engine ]]; then
  if command -v podman >/dev/null; then engine=podman
  elif command -v docker >/dev/null; then engine=docker
  else die "neither podman nor docker is installed (Debian: apt-get install podman)"; fi
fi
command -v "$engine" >/dev/null || die "CONTAINER_ENGINE=$engine is not installed"

base=${BASE:-python:3.11-slim-bookworm}
prefix=${DUPLEX_IMAGE_PREFIX:-duplex}
tag=${DUPLEX_TAG:-latest}

images=("$@")
if [[ ${#images[@]} -eq 0 ]]; then images=(orchestrator tts tts-isolated tts-cosyvoice); fi
if [[ ${images[0]} == all ]]; then images=(redis orchestrator tts tts-isolated tts-gpu tts-cosyvoice); fi

flags=(--build-arg "BASE=$base")
if [[ $engine == podman ]]; then
  flags+=(--format docker --network=host)  # docker format keeps HEALTHCHECK in the image
  ca=/etc/ssl/certs/ca-certificates.crt
  [[ -f $ca ]] && flags+=(-v "$ca:$ca:ro")
fi
# shellcheck disable=SC2206  # BUILD_ARGS is a list of flags on purpose
[[ -n ${BUILD_ARGS:-} ]] && flags+=($BUILD_ARGS)

summary=()
for name in "${images[@]}"; do
  case $name in
    orchestrator)  args=(-f docker/orchestrator.Dockerfile) ;;
    tts)           args=(-f docker/tts.Dockerfile) ;;
    tts-gpu)       args=(-f docker/tts.Dockerfile --build-arg VARIANT=gpu) ;;
    tts-isolated)  args=(-f docker/tts-cosyvoice.Dockerfile --target isolated-espeak) ;;
    tts-cosyvoice) args=(-f docker/tts-cosyvoice.Dockerfile --target cosyvoice) ;;
    redis)         args=(-f docker/redis.Dockerfile) ;;
    *) die "unknown image '$name' (orchestrator tts tts-gpu tts-isolated tts-cosyvoice redis all)" ;;
  esac
  ref="$prefix-$name:$tag"
  say "building $ref ($engine, BASE=$base)"
  start=$SECONDS
  if ! "$engine" build "${flags[@]}" "${args[@]}" -t "$ref" . >"${TMPDIR:-/tmp}/duplex-build-$name.log" 2>&1; then
    tail -40 "${TMPDIR:-/tmp}/duplex-build-$name.log" >&2
    die "building $ref failed (full log: ${TMPDIR:-/tmp}/duplex-build-$name.log)"
  fi
  bytes=$("$engine" image inspect --format '{{.Size}}' "$ref")
  summary+=("$(printf '%-36s %6d MB  built in %3d s' "$ref" $((bytes / 1000000)) $((SECONDS - start)))")
done
say "images:"
printf '  %s\n' "${summary[@]}"
