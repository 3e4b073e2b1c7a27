"""`duplexctl bench --suite soak`: a tiny real run (one session, ~10 s, a fresh worker), the
report's figures, and the plan's overrides."""

from __future__ import annotations

import asyncio

import pytest

from duplexctl.bench import load_suite, report
from duplexctl.bench.runner import BenchOptions, run_bench
from duplexctl.bench.soak import SoakPlan, _slope, plan_for, reply
from duplexd.errors import DuplexError


def test_a_tiny_soak_answers_turns_and_measures_the_workers_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DUPLEX_BENCH_TINY", "1")
    data, modules = asyncio.run(run_bench(BenchOptions(suites=["soak"])))
    assert data["suites"]["ran"] == ["soak"], data["suites"]
    soak = data["soak"]
    print({k: v for k, v in soak.items() if k != "rss_samples"})
    assert soak["sessions"] == 1 and soak["fresh_worker"] is True
    assert soak["turns"] + soak["interrupted"] >= 1
    assert soak["errors"] == 0, soak["error_kinds"]
    assert soak["model"] == "piper-en-us-joe"
    assert 50 < soak["rss_warm_mb"] < 2000 and soak["rss_end_mb"] > 0
    assert len(soak["rss_samples"]) >= 4
    assert isinstance(soak["rss_growth_pct"], float)
    assert report.validate(data) == []
    ids = {t["id"]: t for t in data["targets"]}
    assert ids["soak-errors"]["pass"] is True
    assert ids["soak-rss"]["value"] == soak["rss_growth_pct"]
    rows = modules["soak"].rows(soak)
    assert any(r.key == "soak.rss_growth_pct" for r in rows)


def test_the_plan_follows_the_scale_and_the_environment() -> None:
    assert plan_for("full", {}) == SoakPlan(4, 3.0, 30.0)
    assert plan_for("quick", {}) == SoakPlan(2, 1.0, 15.0)
    env = {"DUPLEX_BENCH_SOAK_SESSIONS": "6", "DUPLEX_BENCH_SOAK_MINUTES": "10",
           "DUPLEX_BENCH_SOAK_WARMUP_S": "60"}  # fmt: skip
    assert plan_for("quick", env) == SoakPlan(6, 10.0, 60.0)
    with pytest.raises(DuplexError, match="not a number"):
        plan_for("full", {"DUPLEX_BENCH_SOAK_MINUTES": "ten"})
    with pytest.raises(DuplexError, match="sessions ≥ 1"):
        plan_for("full", {"DUPLEX_BENCH_SOAK_SESSIONS": "0"})


def test_replies_and_the_slope() -> None:
    import random

    rng = random.Random(1)
    texts = [reply(rng) for _ in range(200)]
    assert min(map(len, texts)) < 10 < 150 < max(map(len, texts))  # one word .. clauses
    assert _slope([(0.0, 100.0), (60.0, 110.0), (120.0, 120.0)]) == 10.0  # MB per minute
    assert _slope([(0.0, 1.0)]) is None
    assert load_suite("soak").targets[0].key == "soak.rss_growth_pct"
