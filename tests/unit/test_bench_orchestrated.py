"""The suites that need the orchestrator (bargein, e2e) and the codec suite (opus), run small
(DUPLEX_BENCH_TINY=1) against real daemons, as CI's short version of every suite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from duplexctl.cli import bench

app = typer.Typer()
app.command()(bench.bench)


@app.callback()
def _root() -> None:
    """Keeps `bench` a named subcommand, as in duplexctl."""


KEYS = [
    "bargein.trials", "bargein.pause_ms.p95", "bargein.worker_silent_ms.p95",
    "bargein.client_silent_ms.p95", "bargein.speech_to_vad_ms.p50",
    "e2e.smart-turn.turns", "e2e.smart-turn.turn_ms.p50", "e2e.smart-turn.turn_ms.p95",
    "e2e.smart-turn.stages.asr.p50", "e2e.smart-turn.false_cut_in_pct",
    "e2e.smart-turn.ended_early_pct",
    "e2e.smart-turn.eot_loaded_ms.p95", "e2e.silence.turn_ms.p50", "e2e.silence.false_cut_in_pct",
    "opus.codec_ms_per_frame.p95", "opus.bytes_per_s", "opus.cpu_ms_per_audio_s",
]  # fmt: skip


def _get(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.integration
def test_bargein_e2e_and_opus_suites_report_their_documented_keys(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    args = ["bench", "--suite", "bargein", "--suite", "e2e", "--suite", "opus", "--json", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200", "DUPLEX_BENCH_TINY": "1"})
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["suites"]["ran"] == ["bargein", "e2e", "opus"] and not data["suites"]["failed"]
    for key in KEYS:
        assert isinstance(_get(data, key), int | float), key
    assert data["bargein"]["trials"] == 2
    assert data["e2e"]["smart-turn"]["turns"] == 2 and data["e2e"]["silence"]["turns"] == 2
    assert data["e2e"]["smart-turn"]["paused"] == 2 and "piper" in data["e2e"]["user_voice"]
    split = data["e2e"]["smart-turn"]["split"]  # the sentences answered inside their pause
    assert len(split) == data["e2e"]["smart-turn"]["ended_early"]
    assert all(set(s) == {"said", "heard", "cut_in"} for s in split)
    assert data["bargein"]["frames_after_flush"] == 0  # nothing of a flushed reply is played
    assert data["opus"]["bytes_per_s"] < data["opus"]["pcm_bytes_per_s"] / 5
    checked = {t["id"] for t in data["targets"]}
    assert {
        "pause",
        "silent",
        "client",
        "e2e-p50",
        "e2e-cut-ins",
        "e2e-eot-p95",
        "opus-cpu",
    } <= checked
