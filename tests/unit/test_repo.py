"""Repository invariants: generated code is fresh, README and CI agree, samples are honest."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_grpc_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", "scripts/gen_proto.sh", str(tmp_path)],
        cwd=ROOT,
        check=True,
        env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"},
    )
    rpc = ROOT / "src/duplexd/rpc"
    for name in ("tts_pb2.py", "tts_pb2.pyi", "tts_pb2_grpc.py", "tts_pb2_grpc.pyi"):
        fresh = (tmp_path / "duplexd/rpc" / name).read_text()
        assert (rpc / name).read_text() == fresh, f"{name} is stale: run `just gen-proto`"


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```(?:bash|sh)\n(.*?)```", text, re.S)
    assert block, "README must open with a shell block"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_exactly_two_commands_and_ci_runs_the_second() -> None:
    commands = _readme_commands()
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci/run").read_text().strip().splitlines()[-1]
    assert ci == commands[1], "`.ci/run` must run the README's test command verbatim"


def test_no_weights_or_audio_committed() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    bad = [f for f in tracked.splitlines() if f.endswith((".onnx", ".bin", ".pth", ".wav"))]
    assert not bad, f"weights/audio must not be committed: {bad}"
