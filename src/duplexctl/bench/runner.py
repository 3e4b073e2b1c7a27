"""One bench run: pick the suites, give them a context, collect the report.

Suites run one after another (never two at once: they would measure each other). A suite that
raises `SuiteUnavailable` is skipped with its reason; one that fails otherwise is recorded as
failed with its message and the run goes on. The worker the run started is stopped at the end,
whatever happened.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from duplexctl import __version__
from duplexctl.bench import (
    ALL,
    ORDER,
    SuiteUnavailable,
    is_available,
    load_suite,
    unavailable_reason,
)
from duplexctl.bench import report as rep
from duplexctl.bench.context import BenchContext, SuiteProgress, scale_for
from duplexd.errors import DuplexError

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["BenchOptions", "plan", "run_bench"]

SCHEMA_VERSION = 1


@dataclass
class BenchOptions:
    suites: list[str] = field(default_factory=lambda: [ALL])
    models: tuple[str, ...] = ()
    worker: str | None = None
    quick: bool = False
    command: str = "duplexctl bench"


def plan(requested: list[str]) -> tuple[list[str], dict[str, str]]:
    """(suites to run, skipped: name -> reason) for the names given to --suite.

    Raises ValueError for an unknown name, and LookupError (its message is the reason) for a
    suite named explicitly that is not available yet.
    """
    run: list[str] = []
    skipped: dict[str, str] = {}
    for name in requested:
        if name == ALL:
            for suite in ORDER:
                if is_available(suite):
                    run.append(suite)
                else:
                    skipped[suite] = unavailable_reason(suite)
        elif name not in ORDER:
            raise ValueError(name)
        elif not is_available(name):
            raise LookupError(f"suite {name!r} is {unavailable_reason(name)}")
        else:
            run.append(name)
    ordered = [s for s in ORDER if s in run]
    return ordered, {k: v for k, v in skipped.items() if k not in ordered}


async def run_bench(
    options: BenchOptions, progress: Progress | None = None
) -> tuple[dict[str, Any], dict[str, ModuleType]]:
    """Run the suites; returns the report (see schema.json) and the suite modules that ran."""
    names, skipped = plan(options.suites)
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    host = rep.host_info()
    calibration = await asyncio.to_thread(rep.calibration)
    commit, dirty = await asyncio.to_thread(rep.git_commit)
    scale = scale_for(quick=options.quick)
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    modules: dict[str, ModuleType] = {}
    worker_meta: dict[str, Any] = {"addr": options.worker, "embedded": False}
    with tempfile.TemporaryDirectory(prefix="duplex-bench-") as tmp:
        ctx = BenchContext(
            scale=scale,
            workdir=Path(tmp),
            models=options.models,
            worker_addr=options.worker,
            progress=progress,
        )
        try:
            for name in names:
                ctx.current = SuiteProgress(progress, name)
                try:
                    module = load_suite(name)
                    results[name] = await module.run(ctx)
                    modules[name] = module
                except SuiteUnavailable as exc:
                    skipped[name] = str(exc)
                except DuplexError as exc:
                    failed[name] = str(exc)
                except Exception as exc:
                    failed[name] = f"{type(exc).__name__}: {exc}"
                finally:
                    ctx.current.done()
            worker_meta = await _worker_meta(ctx)
        finally:
            await ctx.aclose()
    host["loadavg_end"] = rep.loadavg()
    targets = [t for module in modules.values() for t in module.targets]
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "meta": {
            "date": started_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "duration_s": round(time.perf_counter() - started, 1),
            "command": options.command,
            "quick": options.quick,
            "scale": scale.name,
            "host": host,
            "python": rep.python_version(),
            "duplex_version": __version__,
            "git_commit": commit,
            "git_dirty": dirty,
            "worker": worker_meta,
            "calibration": calibration,
        },
        "suites": {
            "requested": list(options.suites),
            "ran": list(modules),
            "skipped": skipped,
            "failed": failed,
        },
        **results,
        "targets": rep.evaluate_targets(results, targets),
    }
    return report, modules


async def _worker_meta(ctx: BenchContext) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "addr": ctx.worker_addr,
        "embedded": ctx.started_embedded,
        "name": None,
        "version": None,
    }
    if ctx.worker_addr is None:
        return meta
    try:
        async with await ctx.client() as client:
            caps = await client.capabilities(timeout=5)
    except DuplexError:
        return meta
    meta["name"] = caps.worker_name or None
    meta["version"] = caps.version or None
    return meta
