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


def test_setup_says_how_far_its_long_steps_are(tmp_path: Path) -> None:
    """The sync (multi-GB with --dev) is not silent: piped, as in CI, a line every heartbeat
    with the time so far and the size of the venv, then the time it took; uv runs quiet."""
    venv, calls = tmp_path / "venv", tmp_path / "uv-calls"
    fake_uv = tmp_path / "uv"
    fake_uv.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {calls}\n'
        "[[ $1 == sync ]] || exit 0\n"
        f"mkdir -p {venv}\n"
        f"for i in 1 2 3; do head -c 300000 /dev/zero > {venv}/part$i; sleep 1; done\n"
    )
    fake_uv.chmod(0o755)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DUPLEX_SETUP_UV": str(fake_uv),
        "DUPLEX_SETUP_HEARTBEAT_S": "1",
        "UV_PROJECT_ENVIRONMENT": str(venv),
    }
    out = subprocess.run(
        ["bash", "scripts/setup.sh"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout).splitlines()
    beats = [ln for ln in lines if re.fullmatch(rf"\[setup\] … uv sync into {venv}: \d+s, .+", ln)]
    assert beats, lines
    assert f"{venv} is" in beats[-1]
    assert any(re.fullmatch(rf"\[setup\] uv sync into {venv}: done in \d+s", ln) for ln in lines)
    assert "sync --locked --no-dev --extra turn --compile-bytecode --quiet" in calls.read_text()
