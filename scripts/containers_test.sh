#!/usr/bin/env bash
# End-to-end test of the container deployment: docker/compose.yaml under podman + podman-compose.
#
#   bash scripts/containers_test.sh          (just containers-test)
#
# 1. builds the images it needs (scripts/containers_build.sh: cached layers are reused);
# 2. bad input: compose without DUPLEX_API_KEY must refuse, naming the variable;
# 3. brings up redis + orchestrator + the CPU Piper worker + a worker from a second, minimal
#    environment (profile isolated), waits for health and measures each cold start;
# 4. a spoken exchange through the orchestrator (duplexctl talk, WAV in / WAV + events out),
#    `duplexctl say --worker HOST:PORT` on both workers, the workers' Redis entries;
# 5. kills the CPU worker: the orchestrator must mark it gone (/status) while the fleet stays
#    ready on the other worker, then recover when it is started again;
# 6. SIGTERM drains a worker (it leaves the registry) within its stop_grace_period;
# 7. bad input: a GPU-profile worker on a host without GPUs, a worker that cannot reach Redis;
# 8. tears everything down (always, via trap).
#
# Needs podman (on the sandboxed CI machines: bash ../shared/tools/podman-sandbox-setup.sh first),
# uv (podman-compose comes from PyPI through `uv tool run`, never from the project's
# dependencies), the project's venv (scripts/setup.sh --dev) and espeak-ng (the test's voice).
# Environment: BASE (default: localhost/debian-python:bookworm when present, else
# python:3.11-slim-bookworm), CONTAINERS_COSYVOICE=1 (also build the CosyVoice image, ~6 GB, and
# check its missing-weights error), CONTAINERS_TEST_OUT (artifacts; default runs/containers-test).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

uv_cmd=${UV:-python3 -m uv}
read -r -a uv <<<"$uv_cmd"
export SSL_CERT_FILE=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
export UV_PYTHON_DOWNLOADS=never
PODMAN_COMPOSE_VERSION=${PODMAN_COMPOSE_VERSION:-1.6.0}

project=${CONTAINERS_TEST_PROJECT:-duplexci}
out=${CONTAINERS_TEST_OUT:-$root/runs/containers-test}
prefix=localhost/duplex
net="${project}_default"
mkdir -p "$out"
rm -f "$out"/*.wav "$out"/*.jsonl "$out"/*.json "$out"/*.log "$out"/*.env
exec > >(tee "$out/containers-test.log") 2>&1

t_all=$SECONDS
step() { printf '\n\033[1m== %s\033[0m  (t=%ds)\n' "$*" $((SECONDS - t_all)); }
ok() { printf '  \033[32mok\033[0m %s\n' "$*"; }
die() { printf '  \033[31mFAIL\033[0m %s\n' "$*" >&2; exit 1; }
py() { "${uv[@]}" run --frozen --no-sync python "$@"; }
# podman 4.3 schedules healthchecks with systemd timers; without systemd (containers, sandboxes) it
# logs an error on every start/stop and simply runs no periodic check. Drop that noise.
podman() {
  command podman "$@" 2> >(grep -vE 'systemd connection to (add|start|remove) healthchecks|/run/systemd/private' >&2)
}
duplexctl() { "${uv[@]}" run --frozen --no-sync duplexctl "$@"; }
podman_compose() { "${uv[@]}" tool run --quiet --from "podman-compose==$PODMAN_COMPOSE_VERSION" podman-compose "$@"; }
compose() { podman_compose --project-name "$project" -f docker/compose.yaml --env-file "$envf" "$@"; }
ctr() {  # container name of a compose service
  podman ps -a --filter "label=io.podman.compose.project=$project" \
    --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | head -1
}
started_ns() { podman inspect --format '{{.State.StartedAt.UnixNano}}' "$1"; }

teardown() {
  local rc=$?
  trap - EXIT
  step "teardown"
  podman rm -f dx-ci-noredis dx-ci-gpu >/dev/null 2>&1 || true
  local c
  for c in $(podman ps -a --filter "label=io.podman.compose.project=$project" --format '{{.Names}}'); do
    podman logs "$c" >"$out/logs-$c.log" 2>&1 || true
  done
  if [[ -n ${envf:-} && -f ${envf:-} ]]; then
    compose --profile isolated --profile gpu down -v --remove-orphans >"$out/compose-down.log" 2>&1 || true
  fi
  local left=()
  mapfile -t left < <(podman ps -a --filter "label=io.podman.compose.project=$project" --format '{{.Names}}')
  if ((${#left[@]})); then podman rm -f "${left[@]}" >/dev/null 2>&1 || true; fi
  podman network rm -f "$net" >/dev/null 2>&1 || true
  ok "stack removed (containers, network, volumes)"
  printf '\ncontainers-test: %s in %d s (log: %s)\n' "$([[ $rc == 0 ]] && echo PASSED || echo FAILED)" \
    $((SECONDS - t_all)) "${out#"$root"/}/containers-test.log"
  exit "$rc"
}
trap teardown EXIT

# Waits until every probe answers healthy; prints each one's time from its container's start.
# Args: LABEL|KIND|TARGET|STARTED_NS ... (KIND: http = GET 200, grpc = grpc.health.v1 SERVING).
wait_healthy() {
  py - "$@" <<'PY'
import sys, time, urllib.request, urllib.error
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

timeout_s = 240.0
probes = [a.split("|") for a in sys.argv[1:]]
pending = {p[0]: p for p in probes}
begin = time.time()
while pending and time.time() - begin < timeout_s:
    for label, (_, kind, target, started_ns) in list(pending.items()):
        healthy = False
        try:
            if kind == "http":
                with urllib.request.urlopen(target, timeout=2) as r:
                    healthy = r.status == 200
            else:
                with grpc.insecure_channel(target) as ch:
                    reply = health_pb2_grpc.HealthStub(ch).Check(
                        health_pb2.HealthCheckRequest(service="duplex.tts.v1.TTS"), timeout=2)
                    healthy = reply.status == health_pb2.HealthCheckResponse.SERVING
        except (urllib.error.URLError, OSError, grpc.RpcError):
            pass
        if healthy:
            since = time.time() - int(started_ns) / 1e9
            print(f"  healthy  {label:<14} {since:6.1f} s after its container started")
            del pending[label]
    time.sleep(0.2)
if pending:
    sys.exit(f"  not healthy after {timeout_s:.0f} s: {', '.join(pending)}")
PY
}

# ---------------------------------------------------------------------------------------------
step "preflight"
command -v podman >/dev/null || die "podman is not installed (sandboxed CI: bash ../shared/tools/podman-sandbox-setup.sh)"
command -v espeak-ng >/dev/null || die "espeak-ng is not installed (bash scripts/setup.sh installs it)"
[[ -x .venv/bin/duplexctl ]] || die "the project venv is missing: bash scripts/setup.sh --dev"
if [[ -z ${BASE:-} ]]; then
  if podman image exists localhost/debian-python:bookworm; then BASE=localhost/debian-python:bookworm
  else BASE=python:3.11-slim-bookworm; fi
fi
export BASE
podman_compose --version | sed 's/^/  /'
mapfile -t stale < <(podman ps -a --filter "label=io.podman.compose.project=$project" --format '{{.Names}}')
if ((${#stale[@]})); then  # a previous run that was killed before its trap ran
  echo "  removing a previous run's containers: ${stale[*]}"
  podman rm -f "${stale[@]}" >/dev/null
fi
podman network rm -f "$net" >/dev/null 2>&1 || true
ok "podman $(podman version --format '{{.Client.Version}}'), BASE=$BASE"

# ---------------------------------------------------------------------------------------------
step "bad input: compose without DUPLEX_API_KEY"
envf="$out/nokey.env"
printf 'DUPLEX_IMAGE_PREFIX=%s\n' "$prefix" >"$envf"
if compose config >"$out/nokey.log" 2>&1; then die "compose accepted a missing DUPLEX_API_KEY"; fi
grep -o 'required variable DUPLEX_API_KEY[^"]*' "$out/nokey.log" | head -1 | sed 's/^/  podman-compose: /'
grep -q 'DUPLEX_API_KEY' "$out/nokey.log" || die "the refusal does not name DUPLEX_API_KEY"
ok "refused, naming DUPLEX_API_KEY"

# ---------------------------------------------------------------------------------------------
step "build images"
images=(redis orchestrator tts tts-isolated)
[[ ${CONTAINERS_COSYVOICE:-0} == 1 ]] && images+=(tts-cosyvoice)
DUPLEX_IMAGE_PREFIX=$prefix DUPLEX_TAG=latest bash scripts/containers_build.sh "${images[@]}"

# ---------------------------------------------------------------------------------------------
step "compose up: redis, orchestrator, tts-cpu (Piper), tts-isolated (second environment)"
key=$(py -c 'import secrets; print(secrets.token_hex(16))')
http_port=$(py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
envf="$out/ci.env"
cat >"$envf" <<EOF
DUPLEX_API_KEY=$key
DUPLEX_IMAGE_PREFIX=$prefix
DUPLEX_TAG=latest
REDIS_IMAGE=$prefix-redis:latest
DUPLEX_RESTART=no
DUPLEX_HTTP_PORT=$http_port
BASE=$BASE
EOF
export DUPLEX_API_KEY=$key
t_up=$SECONDS
compose --profile isolated up -d --no-build >"$out/compose-up.log" 2>&1 || { tail -30 "$out/compose-up.log"; die "compose up failed"; }
ok "compose up -d returned in $((SECONDS - t_up)) s"
redis_c=$(ctr redis); orch_c=$(ctr orchestrator); cpu_c=$(ctr tts-cpu); iso_c=$(ctr tts-isolated)
cpu_addr=$(podman port "$cpu_c" 7001); iso_addr=$(podman port "$iso_c" 7001)
orch="127.0.0.1:$http_port"
printf '  %-14s %s\n' redis "$redis_c" orchestrator "$orch_c → http://$orch" \
  tts-cpu "$cpu_c → $cpu_addr" tts-isolated "$iso_c → $iso_addr"

step "wait for health (cold start = container start → healthy)"
wait_healthy "tts-cpu|grpc|$cpu_addr|$(started_ns "$cpu_c")" \
  "tts-isolated|grpc|$iso_addr|$(started_ns "$iso_c")" \
  "orchestrator|http|http://$orch/readyz|$(started_ns "$orch_c")" | tee "$out/cold-start.txt"
ok "stack healthy $((SECONDS - t_up)) s after compose up"

# The compose healthcheck commands themselves. podman runs them with `exec`; where this sandbox's
# OCI runtime refuses exec (setrlimit), run the very same command in a sibling container instead.
if podman exec "$cpu_c" true 2>"$out/healthcheck-exec.log"; then
  for c in "$redis_c" "$orch_c" "$cpu_c" "$iso_c"; do
    podman healthcheck run "$c" >/dev/null || die "compose healthcheck of $c failed"
  done
  ok "compose healthchecks pass (podman healthcheck run)"
else
  echo "  note: podman exec is refused here ($(grep -o 'error setting rlimit[^"]*' "$out/healthcheck-exec.log" | head -1)),"
  echo "        running the compose healthcheck commands from a sibling container on $net"
  podman run --rm --network "$net" "$prefix-redis:latest" redis-cli -h redis ping | sed 's/^/  redis-cli ping → /'
  podman run --rm --network "$net" --entrypoint duplex-healthcheck "$prefix-orchestrator:latest" http "http://orchestrator:8080/readyz"
  podman run --rm --network "$net" --entrypoint duplex-healthcheck "$prefix-tts:latest" grpc "tts-cpu:7001"
  podman run --rm --network "$net" --entrypoint duplex-healthcheck "$prefix-tts-isolated:latest" grpc "tts-isolated:7001"
  ok "duplex-healthcheck http (orchestrator /readyz) and grpc (both workers) exit 0"
fi

# ---------------------------------------------------------------------------------------------
step "workers registered in Redis"
podman run --rm --network "$net" "$prefix-redis:latest" sh -c '
  for k in $(redis-cli -h redis --scan --pattern "duplex:workers:*" | sort); do
    echo "$k ttl=$(redis-cli -h redis pttl "$k")ms $(redis-cli -h redis get "$k")"
  done' >"$out/registry.txt"
py - "$out/registry.txt" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.strip()]
for line in lines:
    key, ttl, entry = line.split(" ", 2)
    e = json.loads(entry)
    print(f"  {key}  {ttl}  addr={e['addr']} models={e['resident_models']} "
          f"families={e['capabilities']['families']} host={e['host']}")
names = [json.loads(l.split(" ", 2)[2])["name"] for l in lines]
assert any(n.startswith("tts-cpu-") for n in names), f"tts-cpu not registered: {names}"
assert any(n.startswith("tts-isolated-") for n in names), f"tts-isolated not registered: {names}"
PY
ok "both workers announced themselves"
curl -fsS -H "Authorization: Bearer $key" "http://$orch/status" >"$out/status-up.json"
py - "$out/status-up.json" <<'PY'
import json, sys
for w in json.load(open(sys.argv[1]))["workers"]:
    print(f"  /status  {w['name']:<28} {w['addr']:<18} healthy={w['healthy']} "
          f"resident={w['resident_models']} source={w['source']}")
PY

# ---------------------------------------------------------------------------------------------
step "spoken exchange through the orchestrator"
espeak-ng -v en-us -s 150 -w "$out/question.wav" "What time is it right now?"
if duplexctl talk --help >/dev/null 2>&1; then
  duplexctl talk --input "$out/question.wav" --output "$out/answer.wav" --events "$out/events.jsonl" \
    --url "$orch" --api-key "$key" | sed 's/^/  /'
else
  echo "  (duplexctl talk is not registered yet: the same exchange through duplexctl.client.ws)"
  py - "$orch" "$key" "$out/question.wav" "$out/answer.wav" "$out/events.jsonl" <<'PY'
import asyncio, sys, wave
from pathlib import Path
import numpy as np, soxr
from duplexctl.client.ws import run_file_conversation, write_events
url, key, wav_in, wav_out, ev_out = sys.argv[1:]
with wave.open(wav_in) as w:
    rate, pcm = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2")
mic = soxr.resample(pcm.astype(np.float32) / 32768, rate, 16000)
mic16 = (np.clip(mic, -1, 1) * 32767).astype(np.int16)
conv = asyncio.run(run_file_conversation(url, mic16, hello={"api_key": key, "sample_rate": 16000}))
with wave.open(wav_out, "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(48000); w.writeframes(conv.speaker.tobytes())
write_events(Path(ev_out), conv.events)
for e in conv.events:
    if e["type"] == "transcript" and e.get("final"):
        print(f"  you  › {e['text']}")
    elif e["type"] == "reply":
        print(f"  bot  › {e['text']}")
print(f"  {len(mic16) / 16000:.1f} s of input, {conv.frames_received * 0.02:.1f} s of reply audio")
PY
fi
py - "$out/events.jsonl" "$out/answer.wav" <<'PY'
import json, sys, wave
import numpy as np
events = [json.loads(l) for l in open(sys.argv[1])]
ready = next(e for e in events if e["type"] == "ready")
heard = [e["text"] for e in events if e["type"] == "transcript" and e.get("final")]
said = [e["text"] for e in events if e["type"] == "reply"]
lat = [e for e in events if e["type"] == "latency"]
print(f"  the session was routed to worker {ready['worker']} (model {ready['model']})")
if lat:
    l = lat[0]
    print(f"  turn latency (the user stops speaking → first reply audio): {l['total_ms']:.0f} ms")
with wave.open(sys.argv[2]) as w:
    audio = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32)
rms_db = 20 * np.log10(np.sqrt(np.mean(audio**2)) / 32768 + 1e-12)
print(f"  answer.wav: {len(audio) / 48000:.1f} s, {rms_db:.1f} dBFS RMS")
assert heard and said, "no transcript or no reply"
assert "time" in " ".join(heard).lower(), f"ASR did not hear the question: {heard}"
assert any(ch.isdigit() for ch in " ".join(said)), f"the reply does not tell the time: {said}"
assert rms_db > -50, "the reply audio is silent"
PY
ok "heard the question, answered it, the answer is audible"

step "duplexctl say --worker HOST:PORT"
duplexctl say "Hello from the CPU worker container." --worker "$cpu_addr" --out "$out/say-cpu.wav" | sed 's/^/  /'
duplexctl say "Hello from a second environment." --worker "$iso_addr" --out "$out/say-isolated.wav" | sed 's/^/  /'
ok "both workers synthesized (WAVs in ${out#"$root"/})"

# ---------------------------------------------------------------------------------------------
step "kill the CPU worker: the orchestrator marks it gone, the fleet stays ready"
cpu_name=$(py -c "import json,sys; print(next(w['name'] for w in json.load(open(sys.argv[1]))['workers'] if w['name'].startswith('tts-cpu-')))" "$out/status-up.json")
t_kill=$(date +%s.%N)
podman kill "$cpu_c" >/dev/null
# shellcheck disable=SC2016
watch_status='
import json, sys, time, urllib.request
url, name, want, t0 = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
key = sys.argv[5]
deadline = time.time() + 60
while time.time() < deadline:
    keyed = urllib.request.Request(url + "/status", headers={"Authorization": "Bearer " + key})
    with urllib.request.urlopen(keyed, timeout=2) as r:  # with a key set, /status needs it
        workers = {w["name"]: w for w in json.load(r)["workers"]}
    w = workers.get(name)
    state = "gone" if w is None else ("healthy" if w["healthy"] and w["resident_models"] else "unhealthy")
    if state == want or (want == "down" and state in ("gone", "unhealthy")):
        try:
            ready = urllib.request.urlopen(url + "/readyz", timeout=2).status
        except Exception as exc:
            ready = getattr(exc, "code", exc)
        print(f"  {name}: {state} after {time.time() - t0:.1f} s; /readyz {ready}; "
              f"workers: {sorted(workers)}")
        sys.exit(0)
    time.sleep(0.2)
sys.exit(f"  {name} never became {want}")
'
py -c "$watch_status" "http://$orch" "$cpu_name" down "$t_kill" "$key"
py -c "$watch_status" "http://$orch" "$cpu_name" gone "$t_kill" "$key"
curl -fsS -o /dev/null -w '  /readyz while it is down: HTTP %{http_code}\n' "http://$orch/readyz"
ok "the dead worker dropped out; the isolated worker keeps the fleet ready"

step "start it again: the orchestrator routes to it once more"
t_start=$(date +%s.%N)
podman start "$cpu_c" >/dev/null
cpu_addr=$(podman port "$cpu_c" 7001)
wait_healthy "tts-cpu|grpc|$cpu_addr|$(started_ns "$cpu_c")" | tee -a "$out/cold-start.txt"
py -c "$watch_status" "http://$orch" "$cpu_name" healthy "$t_start" "$key"
duplexctl say "Back again." --worker "$cpu_addr" --out "$out/say-cpu-again.wav" | sed 's/^/  /'
ok "recovered"

# ---------------------------------------------------------------------------------------------
step "SIGTERM drains a worker within stop_grace_period"
t_stop=$SECONDS
podman stop --time 30 "$iso_c" >/dev/null
code=$(podman inspect --format '{{.State.ExitCode}}' "$iso_c")
podman logs "$iso_c" 2>&1 | grep -E '"(worker draining|left the registry|worker stopped)"' \
  | py -c 'import json,sys; [print("  log:", json.loads(l)["event"], json.loads(l).get("key", "")) for l in sys.stdin]'
[[ $code == 0 ]] || die "the worker exited $code after SIGTERM"
ok "stopped in $((SECONDS - t_stop)) s with exit code 0"

# ---------------------------------------------------------------------------------------------
step "bad input: a GPU worker on a host without GPUs"
if [[ -e /dev/nvidia0 ]]; then
  echo "  this host has an NVIDIA GPU: skipped"
else
  # The gpu profile's service, on the CPU image (the GPU image is a 6 GB build): podman-compose turns
  # the device reservation into a CDI device, which the runtime must refuse at once.
  if DUPLEX_GPU_IMAGE=$prefix-tts:latest compose --profile gpu up -d --no-build --no-deps tts-gpu0 >"$out/gpu-up.log" 2>&1 \
     && [[ $(podman inspect --format '{{.State.Running}}' "$(ctr tts-gpu0)" 2>/dev/null) == true ]]; then
    echo "  (the runtime started it anyway)"
  else
    grep -iE 'cdi|nvidia|gpu' "$out/gpu-up.log" | grep -iE 'error|unresolvable' | head -2 | cut -c1-200 | sed 's/^/  podman: /'
    ok "the runtime refused the GPU reservation"
  fi
  compose --profile gpu rm -f tts-gpu0 >/dev/null 2>&1 || true
  # And when a runtime lets it start without a GPU, the worker itself exits with the reason.
  set +e
  podman run --rm --name dx-ci-gpu --network "$net" -e DUPLEX_REQUIRE_GPU=1 -e DUPLEX_WORKER__DEVICE=cuda:0 \
    -e DUPLEX_WORKER__NAME=tts-gpu0-test -e DUPLEX_API_KEY="$key" --entrypoint duplexd-fleet-env \
    "$prefix-tts:latest" duplexd worker >"$out/gpu-worker.log" 2>&1
  code=$?
  set -e
  fold -s -w 110 "$out/gpu-worker.log" | grep -v 'level=' | sed 's/^/  /'
  [[ $code == 3 ]] || die "expected exit code 3, got $code"
  ok "exit code 3 before loading anything"
fi

step "bad input: a worker that cannot reach Redis"
podman run -d --name dx-ci-noredis --network "$net" -e DUPLEX_API_KEY="$key" \
  -e DUPLEX_REDIS_URL=redis://no-such-redis:6379/0 -e DUPLEX_WORKER__NAME=tts-noredis \
  "$prefix-tts-isolated:latest" >/dev/null
for _ in $(seq 1 100); do
  podman logs dx-ci-noredis 2>&1 | grep -q 'redis unreachable' && break
  sleep 0.3
done
podman logs dx-ci-noredis 2>&1 | grep 'redis unreachable' | head -1 \
  | py -c 'import json,sys; e=json.loads(sys.stdin.read()); print("  worker log:", e["level"] + ":", e["event"], "(redis=" + e["redis"] + ":", e["error"] + ")")' \
  || die "no clear message about the unreachable Redis"
podman rm -f dx-ci-noredis >/dev/null
ok "the worker names the Redis URL and the error, keeps serving and retries"

if [[ ${CONTAINERS_COSYVOICE:-0} == 1 ]]; then
  step "CosyVoice 2 worker without weights"
  set +e
  podman run --rm --network "$net" -e DUPLEX_API_KEY="$key" -e DUPLEX_WORKER__DEVICE=cpu \
    "$prefix-tts-cosyvoice:latest" >"$out/cosyvoice.log" 2>&1
  code=$?
  set -e
  grep '^duplexd: error' "$out/cosyvoice.log" | fold -s -w 110 | sed 's/^/  /'
  if [[ $code == 0 ]] || ! grep -q 'CosyVoice2-0.5B/llm.pt' "$out/cosyvoice.log"; then
    die "expected the missing-weights error, got exit code $code"
  fi
  ok "exit code $code, every missing file named"
fi

step "done: all checks passed"
