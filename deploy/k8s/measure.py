"""Measure what the Kubernetes manifests request: memory and CPU of a real worker and orchestrator.

    .venv/bin/python deploy/k8s/measure.py [--says 4] [--talks 2]

Starts `duplexd worker` (the default Piper voice) and `duplexd orchestrator` (Silero VAD,
faster-whisper tiny.en, the built-in responder) from this checkout on free loopback ports, waits
until the orchestrator's /readyz answers 200, lets both settle and reads their RSS (psutil).
Then two phases, one after the other:

1. `--says` simultaneous `duplexctl say` streams straight to the worker: the worker's RSS after
   them and the CPU seconds it spent per second of audio it sent;
2. `--talks` simultaneous spoken sessions (`duplexctl talk --input`, an espeak-ng question, one
   turn each) through the orchestrator: its RSS after them, its high-water mark (VmHWM) and the
   CPU seconds it spent per turn (VAD, partial and final Whisper decodes, routing, framing).

The figures in docs/scaling.md and in the resource comments under deploy/k8s come from this.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import wave
from pathlib import Path

import psutil

from duplexd.devkit.procs import DaemonProc, start_daemon
from duplexd.devkit.speech import SAMPLE_RATE, concat, silence, speech

SAY_TEXT = "Sure thing. The next train leaves at six. It usually arrives right on time."
QUESTION = "What time is it right now?"
CTL = [sys.executable, "-m", "duplexctl"]
TAIL_S = 15.0  # a talk listens this long after its question: time for a reply under contention


def memory(proc: DaemonProc) -> dict[str, float]:
    """RSS now and the most the process ever held (VmHWM), MiB."""
    rss = psutil.Process(proc.proc.pid).memory_info().rss / 2**20
    hwm = 0.0
    for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return {"rss_mib": round(rss, 1), "peak_rss_mib": round(hwm, 1)}


def cpu_s(proc: DaemonProc) -> float:
    times = psutil.Process(proc.proc.pid).cpu_times()
    return float(times.user + times.system)


def wait_ready(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"orchestrator on :{port} not ready in {timeout_s} s")


def wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as audio:
        return audio.getnframes() / audio.getframerate()


def run_all(commands: list[list[str]]) -> list[int]:
    procs = [
        subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in commands
    ]
    return [p.wait(300) for p in procs]


def phase_says(work: Path, worker: DaemonProc, n: int) -> dict[str, object]:
    outs = [work / f"say{i}.wav" for i in range(n)]
    before = cpu_s(worker)
    say = [*CTL, "say", SAY_TEXT, "--worker", worker.addr]
    codes = run_all([[*say, "--out", str(out)] for out in outs])
    spent = cpu_s(worker) - before
    audio_s = sum(wav_seconds(o) for o in outs if o.exists())
    return {
        "streams": n, "exit_codes": codes, "audio_s": round(audio_s, 2),
        "worker_cpu_s": round(spent, 2),
        "worker_cpu_s_per_audio_s": round(spent / audio_s, 4) if audio_s else None,
    }  # fmt: skip


def phase_talks(work: Path, orch: DaemonProc, n: int) -> dict[str, object]:
    question = work / "question.wav"
    with wave.open(str(question), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(concat(silence(300), speech(QUESTION), silence(1500)).tobytes())
    events = [work / f"talk{i}.jsonl" for i in range(n)]
    before = cpu_s(orch)
    codes = run_all([
        [*CTL, "talk", "--url", f"127.0.0.1:{orch.port}", "--input", str(question),
         "--output", str(work / f"talk{i}.wav"), "--events", str(e), "--tail", str(TAIL_S)]
        for i, e in enumerate(events)
    ])  # fmt: skip
    spent = cpu_s(orch) - before
    latencies = [
        event
        for e in events
        if e.exists()
        for event in map(json.loads, e.read_text().splitlines())
        if event.get("type") == "latency"
    ]
    turns = len(latencies)
    return {
        "sessions": n, "exit_codes": codes, "turns": turns,
        "turn_total_ms": sorted(round(t["total_ms"]) for t in latencies),
        "asr_ms": sorted(round(t["asr_ms"]) for t in latencies),
        "question_s": round(wav_seconds(question), 2), "orchestrator_cpu_s": round(spent, 2),
        "orchestrator_cpu_s_per_turn": round(spent / turns, 3) if turns else None,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--says", type=int, default=4, help="simultaneous worker streams")
    parser.add_argument("--talks", type=int, default=2, help="simultaneous spoken sessions")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before the idle read")
    parser.add_argument("--keep", type=Path, help="keep logs, WAVs and events in this folder")
    args = parser.parse_args()
    report: dict[str, object] = {"cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="duplex-measure-") as tmp:
        work = args.keep or Path(tmp)
        os.environ.setdefault("DUPLEX_MODELS_DIR", str(work / "models"))
        worker = start_daemon("worker", work)
        try:
            orch = start_daemon("orchestrator", work, ["--worker", f"tts-worker@0={worker.addr}"])
            try:
                wait_ready(orch.port)
                time.sleep(args.settle)
                report["idle"] = {"worker": memory(worker), "orchestrator": memory(orch)}
                report["says"] = phase_says(work, worker, args.says)
                report["after_says"] = {"worker": memory(worker)}
                report["talks"] = phase_talks(work, orch, args.talks)
                report["after_talks"] = {"worker": memory(worker), "orchestrator": memory(orch)}
            finally:
                orch.stop()
        finally:
            worker.stop()
    print(json.dumps(report, indent=2))
    phases = [report["says"], report["talks"]]
    return 1 if any(any(p["exit_codes"]) for p in phases if isinstance(p, dict)) else 0


if __name__ == "__main__":
    sys.exit(main())
