#!/usr/bin/env bash
# Install everything duplex needs on Debian/Ubuntu: system packages, uv, the locked venv.
#   bash scripts/setup.sh         runtime: PortAudio, espeak-ng, the default install
#   bash scripts/setup.sh --dev   + test tools: redis-server, jackd2 (dummy audio), sox, Chromium
#                                 and chromedriver (browser tests), the dev group, and every
#                                 extra (the neural voices' torch stack: the tests build tiny
#                                 XTTS/CSM models and run Kokoro)
# Idempotent: a second run only checks. Needs root (or passwordless sudo) only to add packages.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[[ "${1:-}" == "--dev" ]] && dev=1

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }

pkgs=(libportaudio2 espeak-ng)
(( dev )) && pkgs+=(redis-server jackd2 sox chromium chromium-driver)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if (( ${#missing[@]} )); then
  command -v apt-get >/dev/null || die "missing system packages: ${missing[*]}; install them with your package manager"
  if [[ $(id -u) -eq 0 ]]; then sudo=(); elif sudo -n true 2>/dev/null; then sudo=(sudo -n); else
    die "missing system packages: ${missing[*]}. Run as root or with sudo:
    sudo apt-get update && sudo apt-get install -y ${missing[*]}
then run this command again."
  fi
  say "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq -o DPkg::Lock::Timeout=300
  "${sudo[@]}" apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}" >/dev/null
fi

# uv, installed with pip as a Python module so `python3 -m uv` works without PATH changes.
if ! python3 -m uv --version >/dev/null 2>&1; then
  say "installing uv"
  python3 -m pip install --user --quiet uv 2>/dev/null \
    || python3 -m pip install --user --quiet --break-system-packages uv \
    || die "could not pip-install uv; install it (https://docs.astral.sh/uv/) and retry"
fi

# A machine-wide CA bundle (corporate proxies) is honoured by uv only when named.
if [[ -z "${SSL_CERT_FILE:-}" && -f /etc/ssl/certs/ca-certificates.crt ]]; then
  export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
fi

if (( dev )); then
  say "syncing the locked environment (dev tools + all extras: torch, coqui-tts, transformers) into .venv"
  python3 -m uv sync --locked --all-extras --quiet
else
  say "syncing the locked environment into .venv"
  python3 -m uv sync --locked --no-dev --quiet
fi
say "ready: .venv/bin/duplexctl, .venv/bin/duplexd"
