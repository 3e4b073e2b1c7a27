"""`duplexctl bench`: measured latency, cadence, memory and capacity of a real worker.

Suites are plain modules of this package, found by name, so a new one is one new file:

- ``async def run(ctx: BenchContext) -> dict[str, Any]``: measure, return a JSON-able dict
  (it lands under the suite's name in the report);
- ``targets: list[Target]``: the goals from the issues, checked against that dict;
- optionally ``title: str`` (a human name, `suite_title`) and ``rows(result) -> list[Row]``
  (the lines of the summary table; without it every numeric leaf is listed).

A suite that cannot run on this machine (a missing program or package) raises
`SuiteUnavailable` with the reason; that is a skip, not a failure. A name in `PLANNED` whose
module does not exist yet answers "not available yet" with exit code 2: benchmarks never print
numbers they did not measure.

This module only uses the standard library: `duplexctl --help` imports it.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

__all__ = [
    "ALL",
    "ORDER",
    "PLANNED",
    "Row",
    "SuiteUnavailable",
    "Target",
    "available_suites",
    "is_available",
    "load_suite",
    "suite_title",
    "unavailable_reason",
]

# Run order for `--suite all`: cheap and undisturbed first, the load ramp last on the worker.
ORDER: tuple[str, ...] = (
    "tts",
    "load",
    "concurrency",
    "asr",
    "bargein",
    "e2e",
    "opus",
    "voices",
    "plugins",
    "soak",
)
ALL = "all"

# Suites that need a daemon not written yet: name -> what they need.
PLANNED: dict[str, str] = {
    "bargein": "`duplexd orchestrator`",
    "e2e": "`duplexd orchestrator`",
}


class SuiteUnavailable(Exception):  # reads as a state, like StopIteration
    """This suite cannot run here (missing program, package or daemon): reported as skipped."""


@dataclass(frozen=True)
class Target:
    """A goal from the issues: `key` (dotted, ``*`` matches any one level) `op` `threshold`."""

    id: str
    label: str
    key: str
    op: Literal["<=", ">="]
    threshold: float
    unit: str = ""

    def check(self, value: float) -> bool:
        return value <= self.threshold if self.op == "<=" else value >= self.threshold

    @property
    def text(self) -> str:
        sign = "≤" if self.op == "<=" else "≥"
        return f"{sign} {self.threshold:g}{(' ' + self.unit) if self.unit else ''}"


@dataclass(frozen=True)
class Row:
    """One line of the summary table; `key` names the figure a target is checked on."""

    metric: str
    value: str
    reference: str = ""
    key: str | None = None


def _module_name(name: str) -> str:
    return f"{__name__}.{name}"


def is_available(name: str) -> bool:
    """True when the suite's module exists (planned suites become available by appearing)."""
    if name not in ORDER or name == ALL:
        return False
    return importlib.util.find_spec(_module_name(name)) is not None


def unavailable_reason(name: str) -> str:
    needs = PLANNED.get(name)
    return f"not available yet: needs {needs}" if needs else "not available yet"


def available_suites() -> list[str]:
    return [name for name in ORDER if is_available(name)]


def load_suite(name: str) -> ModuleType:
    module = importlib.import_module(_module_name(name))
    missing = [attr for attr in ("run", "targets") if not hasattr(module, attr)]
    if missing:
        raise TypeError(f"bench suite {name!r} lacks {', '.join(missing)}")
    return module


def suite_title(module: ModuleType, name: str) -> str:
    title: Any = getattr(module, "title", None)
    return str(title) if title else name
