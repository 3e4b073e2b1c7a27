"""`duplexctl bench`: a real (tiny) run of the worker and ASR suites against a real worker, the
report's structure, --compare, the suite registry and the playout model.

The run uses DUPLEX_BENCH_TINY=1 (two utterances per model, levels 1 and 2, one ASR sentence)
so this file stays well under a minute. The orchestrator suites (bargein, e2e) have their own
tests; here a suite module that does not exist yet is simulated by hiding it. Nothing here
asserts a timing: speed is reported, not tested.
"""

from __future__ import annotations

import asyncio
import importlib.machinery
import io
import json
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner, Result

from duplexctl import bench as registry
from duplexctl.bench import ORDER, Target, report
from duplexctl.bench.runner import BenchOptions, plan, run_bench
from duplexctl.bench.stats import playout_underruns, steady_jitter_ms, summary
from duplexctl.cli import bench

app = typer.Typer()
app.command()(bench.bench)


@app.callback()
def _root() -> None:
    """Keeps `bench` a named subcommand, as in duplexctl."""


runner = CliRunner()
ENV = {"COLUMNS": "220", "DUPLEX_BENCH_TINY": "1"}
MODELS = ("piper-en-us-joe", "espeak-en")
ASR = "faster-whisper-tiny-en"

# The keys the issue names, with <model>/<engine> filled in: the documented interface.
DOCUMENTED_KEYS = [
    *(
        f"tts.{m}.{k}"
        for m in MODELS
        for k in (
            "fal_ms.p50",
            "fal_ms.p95",
            "fal_ms.p99",
            "raw_first_chunk_ms.p50",
            "overhead_ms.p50",
            "fal_ratio",
            "rtf",
            "jitter_ms.p95",
            "underruns",
        )
    ),
    *(
        f"load.{m}.{k}"
        for m in MODELS
        for k in ("cold_load_ms", "resident_load_rpc_ms", "unload_ms", "memory_returned_pct")
    ),
    "load.ttl_evict_observed_ms",
    "load.idle_rss_mb",
    "load.piper_load_warmup_ms",
    "concurrency.max_sessions",
    "concurrency.levels.1.underruns",
    f"asr.{ASR}.rtf",
    f"asr.{ASR}.wer",
    f"asr.{ASR}.eos_to_final_ms.p50",
]


def _get(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"{dotted}: no {part!r}"
        node = node[part]
    return node


MINE = ["tts", "load", "concurrency", "asr"]
PLANNED = ("bargein", "e2e")


@pytest.fixture
def hide_planned(monkeypatch: pytest.MonkeyPatch) -> None:
    """As before the orchestrator suites existed: their modules cannot be found."""
    for name in PLANNED:
        monkeypatch.setitem(sys.modules, f"duplexctl.bench.{name}", None)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Result, dict[str, Any]]]:
    """One `bench --quick` (tiny) run of the worker and ASR suites, compared with an old report."""
    folder = tmp_path_factory.mktemp("bench")
    old = {
        "schema_version": 1,
        "suites": {"requested": ["all"], "ran": ["tts"], "skipped": {}, "failed": {}},
        "tts": {"piper-en-us-joe": {"fal_ms": {"p50": 1.0}, "underruns": 0}},
        "concurrency": {"max_sessions": 100},
        "targets": [],
    }
    (folder / "old.json").write_text(json.dumps(old))
    suites = [arg for name in MINE for arg in ("--suite", name)]
    args = ["bench", *suites, "--quick", "--json", str(folder / "new.json")]
    result = runner.invoke(app, [*args, "--compare", str(folder / "old.json")], env=ENV)
    assert result.exit_code == 0, result.output
    yield result, json.loads((folder / "new.json").read_text())


def test_the_report_matches_its_schema(run: tuple[Result, dict[str, Any]]) -> None:
    _, data = run
    assert report.validate(data) == []
    assert data["suites"]["ran"] == MINE
    assert data["suites"]["failed"] == {} and data["suites"]["skipped"] == {}


def test_the_documented_keys_are_numbers(run: tuple[Result, dict[str, Any]]) -> None:
    _, data = run
    for key in DOCUMENTED_KEYS:
        value = _get(data, key)
        if key.endswith("memory_returned_pct") and "espeak" in key:
            assert value is None  # eSpeak takes too little memory to see in RSS
            continue
        assert isinstance(value, int | float) and not isinstance(value, bool), key


def test_meta_says_where_and_how_it_ran(run: tuple[Result, dict[str, Any]]) -> None:
    _, data = run
    meta = data["meta"]
    assert meta["quick"] is True and meta["scale"] == "tiny"
    assert meta["command"].startswith("duplexctl bench --suite tts --suite load ")
    assert "--quick --json " in meta["command"]
    assert meta["host"]["cpu_count"] >= 1
    assert meta["python"].split()[-1].startswith("3.")
    assert meta["duplex_version"]
    assert "git_commit" in meta
    assert meta["worker"]["embedded"] is True and meta["worker"]["name"]
    assert set(meta["calibration"]) == {"python_ms", "numpy_ms"}


def test_every_machine_figure_has_a_same_run_reference(run: tuple[Result, dict[str, Any]]) -> None:
    _, data = run
    for model in MODELS:
        tts = data["tts"][model]
        assert tts["raw_first_chunk_ms"]["p50"] is not None
        assert tts["utterances"] == 2 and tts["frames"] > 0
        assert data["load"][model]["reference"]["inproc_load_warmup_ms"] >= 0
    assert data["concurrency"]["reference"]["engine_rtf"] > 0
    assert next(iter(data["concurrency"]["levels"])) == "1"
    assert data["asr"][ASR]["reference"]["final_decode_ms"]["p50"] is not None
    assert data["load"]["ttl_ms"] == 1000


def test_targets_are_checked_beside_the_values(run: tuple[Result, dict[str, Any]]) -> None:
    result, data = run
    ids = {t["id"] for t in data["targets"]}
    assert ids == {
        "tts-overhead",
        "load-resident-rpc",
        "piper-load-warmup",
        "idle-rss",
        "unload-returns",
        "sessions",
        "asr-rtf",
    }
    for check in data["targets"]:
        assert check["pass"] in (True, False, None)
        assert (check["pass"] is None) == (check["value"] is None)
    assert "RESULT" in result.stdout and "REFERENCE (SAME RUN)" in result.stdout
    assert "targets:" in result.stdout


def test_compare_prints_the_deltas_of_shared_keys(run: tuple[Result, dict[str, Any]]) -> None:
    result, data = run
    out = result.stdout
    assert "compared with" in out
    fal = data["tts"]["piper-en-us-joe"]["fal_ms"]["p50"]
    line = next(ln for ln in out.splitlines() if "tts.piper-en-us-joe.fal_ms.p50" in ln)
    assert "worse" in line and "▲" in line  # 1 ms before: anything measured is slower
    assert f"{fal:g}" in line
    line = next(ln for ln in out.splitlines() if "concurrency.max_sessions" in ln)
    assert "worse" in line and "▼" in line  # 100 before
    assert "tts.espeak-en.fal_ms.p50" not in out.split("compared with")[1]  # not in the old one


def test_from_replays_a_saved_report_and_compares(
    run: tuple[Result, dict[str, Any]], tmp_path: Path
) -> None:
    _, data = run
    new = tmp_path / "new.json"
    new.write_text(json.dumps(data))
    better = json.loads(json.dumps(data))
    better["asr"][ASR]["wer"] = data["asr"][ASR]["wer"] + 0.5
    old = tmp_path / "old.json"
    old.write_text(json.dumps(better))
    result = runner.invoke(app, ["bench", "--from", str(new), "--compare", str(old)], env=ENV)
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.stdout.splitlines() if f"asr.{ASR}.wer " in ln + " ")
    assert "better" in line and "▼" in line
    unchanged = next(ln for ln in result.stdout.splitlines() if "load.idle_rss_mb" in ln)
    assert "=" in unchanged


@pytest.mark.usefixtures("hide_planned")
@pytest.mark.parametrize("suite", PLANNED)
def test_a_suite_whose_module_is_missing_says_what_it_needs(suite: str, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["bench", "--suite", suite, "--json", str(out)], env=ENV)
    assert result.exit_code == 2
    assert "not available yet: needs `duplexd orchestrator`" in result.stderr
    assert "available now: tts, load, concurrency, asr" in result.stderr
    assert not out.exists()  # no run, no numbers


def test_an_unknown_suite_is_a_usage_error() -> None:
    result = runner.invoke(app, ["bench", "--suite", "speed"], env=ENV)
    assert result.exit_code == 2
    assert "unknown suite" in result.stderr


def test_an_unreachable_worker_fails_the_suite_with_its_reason(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = ["bench", "--suite", "concurrency", "--worker", "127.0.0.1:1", "--json", str(out)]
    result = runner.invoke(app, args, env=ENV)
    assert result.exit_code == 1
    assert "failed concurrency: worker 127.0.0.1:1 unavailable" in result.stdout
    data = json.loads(out.read_text())
    assert "concurrency" not in data and report.validate(data) == []


def test_a_missing_compare_file_fails_before_running(tmp_path: Path) -> None:
    result = runner.invoke(app, ["bench", "--compare", str(tmp_path / "nope.json")], env=ENV)
    assert result.exit_code == 2
    assert "no such file" in result.stderr


# -- the registry: later suites are modules that appear -----------------------------------


@pytest.mark.usefixtures("hide_planned")
def test_plan_runs_what_exists_and_skips_what_is_planned() -> None:
    names, skipped = plan(["all"])
    # every existing suite, in ORDER, the hidden ones skipped
    assert names == [n for n in ORDER if n not in PLANNED and n != "all"]
    assert names[: len(MINE) + 2] == [*MINE, "opus", "voices"]
    reason = "not available yet: needs `duplexd orchestrator`"
    assert skipped == {"bargein": reason, "e2e": reason}
    assert plan(["asr", "tts"]) == (["tts", "asr"], {})
    with pytest.raises(LookupError, match="needs `duplexd orchestrator`"):
        plan(["bargein"])
    with pytest.raises(ValueError):
        plan(["nope"])


def test_plan_all_includes_the_orchestrator_suites_once_they_exist() -> None:
    names, _ = plan(["all"])
    assert names[: len(MINE)] == MINE
    assert set(names) <= set(registry.ORDER)


@pytest.fixture
def only_a_new_suite(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Every suite hidden but a stand-in `duplexctl.bench.bargein`: a module that appears."""
    for name in registry.ORDER:
        monkeypatch.setitem(sys.modules, f"duplexctl.bench.{name}", None)
    name = "duplexctl.bench.bargein"
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)

    async def run(ctx: object) -> dict[str, Any]:
        return {"onset_to_silent_ms": {"p50": 12.5}, "count": 3}

    module.run = run  # type: ignore[attr-defined]
    module.targets = [  # type: ignore[attr-defined]
        Target("bargein", "barge-in ≤ 50 ms", "bargein.onset_to_silent_ms.p50", "<=", 50, "ms")
    ]
    monkeypatch.setitem(sys.modules, name, module)
    return module


@pytest.mark.usefixtures("only_a_new_suite")
def test_a_new_suite_module_is_picked_up_and_all_lists_the_rest() -> None:
    assert registry.available_suites() == ["bargein"]
    data, modules = asyncio.run(run_bench(BenchOptions(suites=["all"])))
    assert data["suites"]["ran"] == ["bargein"]
    assert data["bargein"] == {"onset_to_silent_ms": {"p50": 12.5}, "count": 3}
    assert data["suites"]["skipped"]["e2e"] == "not available yet: needs `duplexd orchestrator`"
    assert data["suites"]["skipped"]["tts"] == "not available yet"
    assert data["targets"] == [
        {
            "id": "bargein",
            "label": "barge-in ≤ 50 ms",
            "key": "bargein.onset_to_silent_ms.p50",
            "op": "<=",
            "threshold": 50,
            "value": 12.5,
            "pass": True,
        }
    ]
    assert data["meta"]["worker"]["addr"] is None  # no suite needed a worker: none started
    assert report.validate(data) == []
    out = Console(file=io.StringIO(), width=200)
    out.print(report.results_table(data, modules, data["targets"]), report.summary_lines(data))
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert "skipped e2e: not available yet: needs `duplexd orchestrator`" in text
    assert "onset_to_silent_ms.p50" in text and "targets: 1 pass, 0 fail" in text


# -- the pieces ----------------------------------------------------------------------------


def test_playout_counts_empty_buffer_ticks() -> None:
    paced = [0.1 + 0.02 * i for i in range(50)]
    assert playout_underruns(paced) == 0
    burst = [0.1] * 6 + [0.1 + 0.02 * i for i in range(1, 45)]
    assert playout_underruns(burst) == 0
    stalled = paced[:20] + [t + 0.1 for t in paced[20:]]  # 100 ms late from frame 20 on
    assert playout_underruns(stalled) == 4  # 40 ms of buffer covers two of the five ticks
    assert playout_underruns([]) == 0
    assert playout_underruns([0.5]) == 0


def test_jitter_ignores_the_lead_burst() -> None:
    arrivals = [0.0] * 7 + [0.02 * i for i in range(1, 40)]
    assert max(steady_jitter_ms(arrivals)) < 1e-6
    late = [*arrivals[:20], *(t + 0.005 for t in arrivals[20:])]
    assert max(steady_jitter_ms(late)) == pytest.approx(5.0)


def test_summary_and_empty_summary() -> None:
    assert summary([1, 2, 3, 4])["p50"] == 2.5
    assert summary([]) == {"p50": None, "p95": None, "p99": None, "mean": None, "max": None}


def test_validate_names_what_is_wrong() -> None:
    problems = report.validate({"schema_version": 1, "suites": {}, "targets": [{"id": 3}]})
    assert "$: missing 'meta'" in problems
    assert any("$.suites: missing 'ran'" in p for p in problems)
    assert any(p.startswith("$.targets[0].id: expected string") for p in problems)


def test_lookup_and_direction() -> None:
    data = {"tts": {"a": {"x": 1}, "b": {"x": 2}, "c": 5}}
    assert report.lookup(data, "tts.*.x") == [("tts.a.x", 1), ("tts.b.x", 2)]
    assert report.direction("tts.m.fal_ms.p50") == -1
    assert report.direction("asr.e.wer_clean") == -1
    assert report.direction("concurrency.max_sessions") == 1
    assert report.direction("load.m.memory_returned_pct") == 1
    assert report.direction("tts.m.frames") == 0


def test_the_cli_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, duplexctl.cli.bench\n"
        "print(','.join(m for m in ('grpc', 'numpy', 'duplexd.config') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
