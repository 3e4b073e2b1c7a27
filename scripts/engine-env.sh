#!/usr/bin/env bash
# Build (or check) the Python environment of an engine family whose pins clash with uv.lock, so a
# TTS worker can serve it from that environment (the same isolation as docker/tts-cosyvoice.Dockerfile,
# without Docker):
#
#   bash scripts/engine-env.sh parler          # -> .venvs/parler (Parler-TTS: transformers 4.46.1)
#   .venvs/parler/bin/duplexd devkit tiny-model parler      # a tiny model, or pull the real one
#   DUPLEX_WORKER__ADAPTER=parler .venvs/parler/bin/duplexd worker --default-model parler-tts-mini-v1
#
# The environment is Python 3.11 with this checkout installed editable (no extras: its default
# dependencies) plus the engine's pins, all from docker/engines/<engine>/requirements.txt
# (compiled from requirements.in + pyproject.toml with overrides.txt; see the header there).
# Idempotent: when the environment exists and was built from the same requirement files, a second
# run only checks that it imports.
set -euo pipefail

usage() { echo "usage: bash scripts/engine-env.sh parler [--recompile]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
engine=$1
recompile=${2:-}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

case "$engine" in
  parler)
    family=parler
    default_model=parler-tts-mini-v1
    check='import parler_tts, transformers, torch, duplexd.tts.app, duplexd.tts.adapters.parler
print("transformers", transformers.__version__, "torch", torch.__version__)'
    ;;
  *) echo "engine-env: unknown engine ${engine@Q} (known: parler)" >&2; exit 2 ;;
esac

reqdir=docker/engines/$engine
env_dir=.venvs/$engine
py=$env_dir/bin/python
stamp=$env_dir/.duplex-engine-env

export SSL_CERT_FILE=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
export UV_PYTHON_DOWNLOADS=${UV_PYTHON_DOWNLOADS:-never}
# Which uv: $UV (what `uv run` exports to its children, e.g. pytest under `just test`; may also be
# a command such as "python3 -m uv"), uv on PATH, the one `pip install --user uv` leaves in
# ~/.local/bin, else the Python module scripts/setup.sh installs. Under `uv run`, `python3` is the
# project venv's, which has no uv module, so the module is also tried with the system Python.
uv=()
for candidate in "${UV:-}" uv "$HOME/.local/bin/uv" "python3 -m uv" "/usr/bin/python3 -m uv"; do
  [[ -n $candidate ]] || continue
  read -ra words <<<"$candidate"
  if "${words[@]}" --version >/dev/null 2>&1; then uv=("${words[@]}"); break; fi
done
if [[ ${#uv[@]} -eq 0 ]]; then
  echo "engine-env: needs uv: run bash scripts/setup.sh (or see https://docs.astral.sh/uv/)" >&2
  exit 1
fi

if [[ $recompile == --recompile ]]; then
  # refresh the committed pins (needs the network): the project's default dependencies + the engine
  "${uv[@]}" pip compile --quiet pyproject.toml "$reqdir/requirements.in" \
    --override "$reqdir/overrides.txt" --python-version 3.11 --no-header \
    -o "$reqdir/requirements.lock.tmp"
  {
    echo "# The $engine engine environment (.venvs/$engine), fully pinned: the project's default"
    echo "# dependencies (pyproject.toml) + requirements.in, with overrides.txt. Regenerate with"
    echo "# \`bash scripts/engine-env.sh $engine --recompile\`; do not edit by hand."
    cat "$reqdir/requirements.lock.tmp"
  } >"$reqdir/requirements.txt"
  rm -f "$reqdir/requirements.lock.tmp"
fi

# what the environment was built from: the pins and the project's dependency list
want=$(cat "$reqdir/requirements.txt" "$reqdir/overrides.txt" pyproject.toml | sha256sum | cut -d' ' -f1)

if [[ -x $py && -f $stamp && $(cat "$stamp") == "$want" ]]; then
  echo "engine-env: $env_dir is up to date; checking it"
else
  started=$SECONDS
  [[ -x $py ]] || "${uv[@]}" venv --quiet --python 3.11 "$env_dir"
  # the pins, and this checkout editable on top (its default dependencies resolve to the pins)
  "${uv[@]}" pip install --quiet --python "$py" -r "$reqdir/requirements.txt" \
    --override "$reqdir/overrides.txt" -e .
  echo "$want" >"$stamp"
  echo "engine-env: built $env_dir in $((SECONDS - started)) s"
fi

"$py" -c "$check"

cat <<EOF
engine-env: $engine environment: $root/$env_dir
start a worker from it (serves only the $family family):
  DUPLEX_WORKER__ADAPTER=$family $env_dir/bin/duplexd worker --default-model $default_model
a tiny model of the real architecture for tests (no downloads):
  $env_dir/bin/duplexd devkit tiny-model $family --out \$DUPLEX_MODELS_DIR/$default_model
EOF
