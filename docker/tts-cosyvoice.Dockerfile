# syntax=docker/dockerfile:1
# TTS workers built in their OWN Python environment, apart from uv.lock (design section 5: CosyVoice 2
# needs torch 2.3.1-era pins that cannot share the main environment's torch 2.11 / numpy 2.x).
#
# The mechanism: a venv at /opt/engine built by pip from docker/engines/<engine>/requirements.txt
# (the engine's pins) + docker/engines/worker-runtime.txt (what `duplexd worker` imports), the
# duplex wheel on top with --no-deps, and the worker joins the fleet through Redis like any other.
#
#   docker build -f docker/tts-cosyvoice.Dockerfile -t duplex-tts-cosyvoice .           CosyVoice 2
#   docker build -f docker/tts-cosyvoice.Dockerfile --target isolated-espeak -t duplex-tts-isolated .
#
# `isolated-espeak` is the same mechanism with a minimal engine (eSpeak NG, numpy 1.26 etc.): small
# and quick, it is what the container test uses to prove a second-environment worker joins the
# fleet. The CosyVoice 2 code comes from PyPI (`cosyvoice2-eu` bundles the upstream cosyvoice +
# matcha runtime); its weights are never baked in: /models volume (see duplex_cosyvoice.adapter).
ARG BASE=python:3.11-slim-bookworm

# --- the duplex wheel (built from the checkout; uv only builds it, nothing is resolved here) ----
FROM ${BASE} AS wheel
ARG UV_VERSION=0.13.9
ENV UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv
RUN SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    python3 -m venv /opt/uv \
 && SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    /opt/uv/bin/pip install --no-cache-dir --disable-pip-version-check --quiet "uv==${UV_VERSION}"
WORKDIR /src
COPY pyproject.toml uv.lock README.md LICENSE ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv,id=duplex-uv \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt /opt/uv/bin/uv build --wheel --out-dir /wheels

# --- the runtime every engine image shares (metadata only: nothing here changes often) --------
FROM ${BASE} AS engine-runtime
RUN useradd --system --uid 10001 --user-group --home-dir /home/duplex --create-home duplex \
 && install -d -o duplex -g duplex /models
ENV PATH=/opt/engine/bin:$PATH \
    DUPLEX_HOME=/app \
    DUPLEX_MODELS_DIR=/models \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /app
VOLUME ["/models"]
EXPOSE 7001 9101
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["duplex-healthcheck", "grpc"]
ENTRYPOINT ["duplexd"]
CMD ["worker", "--config", "/etc/duplex/worker.yaml"]
# Layer order in each target: system packages, the engine's pinned venv (the slow part, keyed only
# on its requirement files), then duplex itself and its configs, which change often.

# --- isolated-espeak: the mechanism with a minimal engine (tested in CI) --------------------------
FROM engine-runtime AS isolated-espeak
USER root
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends espeak-ng >/dev/null \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log
COPY docker/engines/worker-runtime.txt docker/engines/espeak/requirements.txt /tmp/req/
RUN SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    python3 -m venv /opt/engine \
 && SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    /opt/engine/bin/pip install --no-cache-dir --quiet \
      -r /tmp/req/worker-runtime.txt -r /tmp/req/requirements.txt -c /tmp/req/requirements.txt \
 && rm -rf /tmp/req
COPY --from=wheel /wheels /tmp/wheels
RUN /opt/engine/bin/pip install --no-cache-dir --quiet --no-deps /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && /opt/engine/bin/python -c "import numpy, duplexd.tts.app; print('engine env: numpy', numpy.__version__)"
COPY configs /app/configs
COPY voicepacks /app/voicepacks
COPY docker/config/worker.yaml /etc/duplex/worker.yaml
COPY --chmod=0755 docker/bin/duplexd-fleet-env /usr/local/bin/
COPY --chmod=0755 docker/bin/duplex-healthcheck /usr/local/lib/duplex/duplex-healthcheck
# The probe runs on the engine's interpreter (it has grpcio-health-checking too).
RUN printf '#!/bin/sh\nexec /opt/engine/bin/python /usr/local/lib/duplex/duplex-healthcheck "$@"\n' \
      > /usr/local/bin/duplex-healthcheck && chmod 0755 /usr/local/bin/duplex-healthcheck
ENV DUPLEX_WORKER__ADAPTER=espeak \
    DUPLEX_MODEL_MANAGER__DEFAULT_MODEL_ID=espeak-en \
    DUPLEX_WORKER__NAME=tts-isolated-espeak
USER duplex

# --- cosyvoice (default target): CosyVoice 2 with its own torch 2.3.1 pins ------------------------
FROM engine-runtime AS cosyvoice
USER root
COPY docker/engines/worker-runtime.txt docker/engines/build-constraints.txt \
     docker/engines/cosyvoice/requirements.txt /tmp/req/
RUN SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    python3 -m venv /opt/engine \
 && SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_CONSTRAINT=/tmp/req/build-constraints.txt \
    /opt/engine/bin/pip install --no-cache-dir --progress-bar off \
      -r /tmp/req/requirements.txt -r /tmp/req/worker-runtime.txt -c /tmp/req/requirements.txt \
 && rm -rf /tmp/req \
 && /opt/engine/bin/python -c "import torch, whisper, tn"
# The CosyVoice 2 runtime code (upstream cosyvoice + matcha packages) from PyPI, without its
# unpinned dependency list (deepspeed, onnxruntime-gpu, ...): requirements.txt pins what it imports.
ARG COSYVOICE_CODE="cosyvoice2-eu==0.2.8"
RUN SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    /opt/engine/bin/pip install --no-cache-dir --quiet --no-deps "${COSYVOICE_CODE}"
COPY --from=wheel /wheels /tmp/wheels
COPY docker/engines/cosyvoice /tmp/duplex-cosyvoice
RUN SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    /opt/engine/bin/pip install --no-cache-dir --quiet --no-deps /tmp/wheels/*.whl /tmp/duplex-cosyvoice \
 && install -d /app/voicepacks && cp -r /tmp/duplex-cosyvoice/voicepacks/cosyvoice2 /app/voicepacks/ \
 && rm -rf /tmp/wheels /tmp/duplex-cosyvoice \
 && /opt/engine/bin/python -c "import torch, numpy, duplexd.tts.app, duplex_cosyvoice.adapter; print('engine env: torch', torch.__version__, 'numpy', numpy.__version__)" \
 && /opt/engine/bin/python -c "from cosyvoice.cli.cosyvoice import CosyVoice2; print('CosyVoice2 code importable from', CosyVoice2.__module__)"
COPY configs /app/configs
COPY voicepacks /app/voicepacks
COPY docker/config/worker.yaml /etc/duplex/worker.yaml
COPY --chmod=0755 docker/bin/duplexd-fleet-env /usr/local/bin/
COPY --chmod=0755 docker/bin/duplex-healthcheck /usr/local/lib/duplex/duplex-healthcheck
RUN printf '#!/bin/sh\nexec /opt/engine/bin/python /usr/local/lib/duplex/duplex-healthcheck "$@"\n' \
      > /usr/local/bin/duplex-healthcheck && chmod 0755 /usr/local/bin/duplex-healthcheck
ENV DUPLEX_WORKER__ADAPTER=cosyvoice2 \
    DUPLEX_MODEL_MANAGER__DEFAULT_MODEL_ID=cosyvoice2-en-base \
    DUPLEX_WORKER__NAME=tts-cosyvoice \
    DUPLEX_WORKER__SYNTH_THREADS=4
USER duplex
