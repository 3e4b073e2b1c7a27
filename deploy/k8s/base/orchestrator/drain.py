"""preStop hook of an orchestrator pod: let open sessions end on their own before SIGTERM.

    python /etc/duplex/k8s/drain.py --port 8080 --min-wait 5 --max-wait 100

Kubernetes runs this when it starts to terminate the pod, before it sends SIGTERM, within
terminationGracePeriodSeconds. By then the pod is leaving the Service's endpoints, so the
sessions it holds can only go down. The hook returns

- after --min-wait seconds at the earliest: the time the gateway and kube-proxy need to stop
  sending the pod new sessions;
- as soon as the pod's `duplex_orch_sessions` gauge (its own /metrics, the number the
  autoscaler scales on) reads 0, i.e. every session has ended by itself;
- at --max-wait seconds at the latest, or when /metrics stops answering: then SIGTERM makes
  duplexd tell the sessions still open that it is going away, and their clients reconnect
  through the Service to another replica.

Standard library only: it runs in the orchestrator's container with the image's Python.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request

METRIC = "duplex_orch_sessions"


def open_sessions(port: int, timeout_s: float = 2.0) -> int | None:
    """The orchestrator's open sessions, or None when its /metrics cannot be read."""
    url = f"http://127.0.0.1:{port}/metrics"
    key = os.environ.get("DUPLEX_API_KEY")  # with a key set, /metrics needs it too
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        request = urllib.request.Request(url, headers=headers)  # our own pod
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:  # noqa: S310
            text = reply.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == METRIC:
            return int(float(value))
    return None


def drain(port: int, min_wait_s: float, max_wait_s: float, poll_s: float = 1.0) -> str:
    """Wait as the module says; returns why it stopped waiting."""
    start = time.monotonic()
    while True:
        waited = time.monotonic() - start
        sessions = open_sessions(port)
        if waited >= min_wait_s and sessions == 0:
            return f"no open sessions after {waited:.0f} s"
        if waited >= min_wait_s and sessions is None:
            return f"/metrics on :{port} does not answer after {waited:.0f} s; not waiting"
        if waited >= max_wait_s:
            return f"{sessions} sessions still open after {waited:.0f} s; SIGTERM hands them off"
        time.sleep(min(poll_s, max(0.0, max_wait_s - waited)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="the orchestrator's HTTP port")
    parser.add_argument("--min-wait", type=float, default=5.0, help="seconds, at least")
    parser.add_argument("--max-wait", type=float, required=True, help="seconds, at most")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between reads")
    args = parser.parse_args(argv)
    if not 0 <= args.min_wait <= args.max_wait:
        parser.error("need 0 <= --min-wait <= --max-wait")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"drain: {drain(args.port, args.min_wait, args.max_wait, args.poll)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
