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
quietly() { "$@" >/dev/null; }
took() { local s=$(( SECONDS - $1 )); (( s >= 60 )) && printf '%dm%02ds' $(( s / 60 )) $(( s % 60 )) || printf '%ds' "$s"; }

# The long steps (apt, a multi-GB uv sync) must not look hung. `long LABEL CMD…` runs CMD and
# says every $DUPLEX_SETUP_HEARTBEAT_S seconds (30) how long it has run and how big .venv has
# grown; with FOREGROUND=1 on a terminal CMD draws its own progress (uv's bars) instead. Then
# one line with the time it took. CI logs get a line per heartbeat, not a bar per package.
venv=${UV_PROJECT_ENVIRONMENT:-.venv}
uv=(${DUPLEX_SETUP_UV:-python3 -m uv})
long() {
  local label=$1; shift
  local start=$SECONDS beat=${DUPLEX_SETUP_HEARTBEAT_S:-30} next
  say "$label …"
  if [[ ${FOREGROUND:-0} == 1 && -t 2 ]]; then
    "$@" || die "$label failed (exit $?)"
  else
    "$@" & local pid=$!
    next=$(( start + beat ))
    while kill -0 "$pid" 2>/dev/null; do
      sleep 1
      if (( SECONDS >= next )) && kill -0 "$pid" 2>/dev/null; then
        local size=""
        [[ -d $venv ]] && size=", $venv is $(du -sh "$venv" 2>/dev/null | cut -f1)"
        say "… $label: $(took "$start")$size"
        next=$(( SECONDS + beat ))
      fi
    done
    wait "$pid" || die "$label failed (exit $?)"
  fi
  say "$label: done in $(took "$start")"
}

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
  export DEBIAN_FRONTEND=noninteractive
  long "apt-get update" "${sudo[@]}" apt-get update -qq -o DPkg::Lock::Timeout=300
  long "installing system packages: ${missing[*]}" \
    quietly "${sudo[@]}" apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}"
fi

# uv, installed with pip as a Python module so `python3 -m uv` works without PATH changes.
if ! "${uv[@]}" --version >/dev/null 2>&1; then
  say "installing uv"
  python3 -m pip install --user --quiet uv 2>/dev/null \
    || python3 -m pip install --user --quiet --break-system-packages uv \
    || die "could not pip-install uv; install it (https://docs.astral.sh/uv/) and retry"
fi

# A machine-wide CA bundle (corporate proxies) is honoured by uv only when named.
if [[ -z "${SSL_CERT_FILE:-}" && -f /etc/ssl/certs/ca-certificates.crt ]]; then
  export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
fi

# On a terminal uv draws its progress bars; elsewhere (CI) it is quiet and `long` says how far.
# --compile-bytecode: uv does not write .pyc files by default, so where Python may not write
# them either (PYTHONDONTWRITEBYTECODE, a read-only venv) every process would compile typer,
# rich, grpc, numpy … from source at each start (`duplexctl --help` alone: ~0.2 s of it).
[[ -t 2 ]] && quiet=() || quiet=(--quiet)
if (( dev )); then
  say "the locked environment with the dev tools and every extra (torch, coqui-tts, transformers: several GB, minutes on a cold cache)"
  FOREGROUND=1 long "uv sync into $venv" "${uv[@]}" sync --locked --all-extras --compile-bytecode "${quiet[@]}"
else
  FOREGROUND=1 long "uv sync into $venv" "${uv[@]}" sync --locked --no-dev --extra turn --compile-bytecode "${quiet[@]}"
fi
say "ready: $venv/bin/duplexctl, $venv/bin/duplexd"
