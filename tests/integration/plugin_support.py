"""What the LiveKit and Pipecat plugin tests share: the worker's texts and models, reading the
worker's own /metrics, hearing audio back with Whisper, and importing a plugin without its
framework installed."""

from __future__ import annotations

import subprocess
import sys

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from duplexd.asr.faster_whisper import FasterWhisperASR
from duplexd.audio.resample import resample_once
from duplexd.devkit.procs import DaemonProc

PIPER, ESPEAK = "piper-en-us-joe", "espeak-en"
SENTENCE = "Please turn on the lights in the kitchen and then close the door."
LONG = " ".join(
    [
        "Once upon a time, in a small town by the sea, there lived a lighthouse keeper named Ada.",
        "Every night she climbed the long stairs and lit the great lamp for the ships.",
    ]
    * 3
)

_WITHOUT = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == {top!r} or name.startswith({top!r} + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
import duplex_plugins  # the package alone never imports a framework
assert not [m for m in sys.modules if m.startswith(("livekit.agents", "pipecat"))]
try:
    import duplex_plugins.{module}
except ImportError as exc:
    print(exc)
"""


def import_without(top: str, module: str) -> str:
    """What importing `duplex_plugins.<module>` says when package `top` cannot be imported
    (a fresh interpreter; `duplex_plugins` itself must import without any framework)."""
    code = _WITHOUT.format(top=top, module=module)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout + out.stderr


def metric(worker: DaemonProc, name: str, **labels: str) -> float:
    """A sample of the worker's own /metrics (0 when it has not been recorded yet)."""
    text = httpx.get(f"http://127.0.0.1:{worker.info['metrics_port']}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def frames_sent(worker: DaemonProc, model: str = PIPER) -> int:
    return int(metric(worker, "duplex_tts_frames_sent_total", model=model))


def heard(asr: FasterWhisperASR, pcm: bytes, rate: int = 48_000) -> str:
    """What Whisper hears in 16-bit mono PCM at `rate`."""
    return asr.transcribe(resample_once(np.frombuffer(pcm, dtype=np.int16), rate, 16_000)).text
