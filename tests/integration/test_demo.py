"""`duplexctl demo`, the README's first command, runs as a user runs it: a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration


def test_demo_holds_a_conversation_with_a_barge_in(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "duplexctl", "demo", "--json", "demo.json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False,
        env={**os.environ, "COLUMNS": "200"},  # a line per thing said
    )  # fmt: skip
    print(result.stdout[-3000:])  # the conversation and the tables, in the CI log
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "demo.json").read_text())
    turns = summary["turns"]
    assert len(turns) == 4
    assert [t["interrupted"] for t in turns] == [False, True, False, False]
    assert turns[0]["user"].lower().startswith("hello there")  # heard from its first word
    assert turns[0]["bot"].startswith("Hello! I'm duplex")
    # the story as it was heard: the words that played before the barge-in, and the cut
    assert turns[1]["bot"].startswith("Once upon a time,") and turns[1]["bot"].endswith(" ⟂")
    assert "named Ada" not in turns[1]["bot"]  # that clause was cut short
    cut = [ln for ln in result.stdout.splitlines() if "bot ›" in ln and ln.endswith(" ⟂")]
    assert len(cut) == 1 and turns[1]["bot"].endswith(cut[0].split("bot › ")[1]), cut
    assert "time" in turns[2]["user"].lower() and turns[2]["bot"].startswith("It is")
    barge = summary["bargeins"][0]
    assert barge["vad_to_worker_silent_ms"] <= 50 and barge["frames_after_pause"] <= 1
    with wave.open(str(tmp_path / "demo.wav")) as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (2, 48_000)
        audio = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").reshape(-1, 2)
    assert audio[:, 0].std() > 100 and audio[:, 1].std() > 100  # you left, bot right
    assert "Barge-in during turn 2" in result.stdout and "wrote demo.wav" in result.stdout
