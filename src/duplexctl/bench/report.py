"""The bench report: meta, target checks, the JSON Schema check, and the rich tables.

Dotted keys (``tts.piper-en-us-joe.fal_ms.p50``) name a figure in the nested JSON; they are
what targets and `--compare` match on.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from duplexctl.bench import Row, Target
from duplexctl.cli._common import table
from duplexctl.cli.tables import Column, Listing

__all__ = [
    "calibration",
    "compare_table",
    "direction",
    "evaluate_targets",
    "flatten",
    "git_commit",
    "host_info",
    "load_schema",
    "lookup",
    "results_table",
    "validate",
]

_PASS = Text("pass", style="bold green")
_FAIL = Text("FAIL", style="bold red")
_NA = Text("n/a", style="dim")


# -- meta ------------------------------------------------------------------------------------


def calibration() -> dict[str, float]:
    """Fixed CPU workloads (best of 3): a machine's speed, measured in the same run."""
    import numpy as np

    def python_work() -> None:
        total = 0
        for i in range(300_000):
            total += i * i % 7

    rng = np.random.default_rng(0)
    a = rng.standard_normal((192, 192)).astype(np.float32)

    def numpy_work() -> None:
        b = a
        for _ in range(100):
            b = np.tanh(b @ a)

    def best(fn: Any) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            fn()
            times.append((time.perf_counter() - started) * 1000)
        return round(min(times), 2)

    return {"python_ms": best(python_work), "numpy_ms": best(numpy_work)}


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def host_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count() or 1,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "loadavg_start": loadavg(),
        "loadavg_end": None,
    }


def git_commit(cwd: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout the code runs from, or (None, None)."""
    from duplexd.config import repo_root

    where = cwd or repo_root()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            check=False,
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return commit.stdout.strip() or None, dirty


def python_version() -> str:
    return f"{platform.python_implementation()} {sys.version.split()[0]}"


# -- dotted keys ---------------------------------------------------------------------------


def flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every numeric leaf (not bool) of nested dicts as (dotted key, value); lists are skipped."""
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, path + ".")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield path, float(value)


def lookup(data: Mapping[str, Any], pattern: str) -> list[tuple[str, Any]]:
    """(key, value) for each path matching `pattern`; ``*`` matches any one level."""
    found: list[tuple[str, Any]] = [("", data)]
    for part in pattern.split("."):
        step: list[tuple[str, Any]] = []
        for path, node in found:
            if not isinstance(node, Mapping):
                continue
            names = list(node) if part == "*" else [part] if part in node else []
            step += [(f"{path}.{name}" if path else name, node[name]) for name in names]
        found = step
    return found


def evaluate_targets(results: Mapping[str, Any], targets: Sequence[Target]) -> list[dict[str, Any]]:
    """One entry per figure a target applies to; `pass` is None when nothing was measured."""
    out: list[dict[str, Any]] = []
    for target in targets:
        for key, value in lookup(results, target.key):
            if isinstance(value, Mapping):
                continue
            number = (
                value if isinstance(value, int | float) and not isinstance(value, bool) else None
            )
            out.append(
                {
                    "id": target.id,
                    "label": target.label,
                    "key": key,
                    "op": target.op,
                    "threshold": target.threshold,
                    "value": number,
                    "pass": None if number is None else target.check(float(number)),
                }
            )
    return out


# -- schema ----------------------------------------------------------------------------------


def load_schema() -> dict[str, Any]:
    text = resources.files("duplexctl.bench").joinpath("schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "null": (type(None),),
}


def validate(data: Any, schema: Mapping[str, Any] | None = None) -> list[str]:
    """Problems of `data` against the bench schema (empty: valid).

    A small checker for the subset of JSON Schema that schema.json uses (type, const, enum,
    required, properties, additionalProperties, items, anyOf, local $ref); jsonschema is not a
    dependency.
    """
    root = schema if schema is not None else load_schema()
    problems: list[str] = []
    _check(data, root, root, "$", problems)
    return problems


def _resolve(root: Mapping[str, Any], ref: str) -> Mapping[str, Any]:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return dict(node)


def _type_ok(value: Any, name: str) -> bool:
    if isinstance(value, bool) and name in ("number", "integer"):
        return False
    return isinstance(value, _TYPES[name])


def _check(
    value: Any, schema: Mapping[str, Any], root: Mapping[str, Any], where: str, problems: list[str]
) -> None:
    if "$ref" in schema:
        _check(value, _resolve(root, schema["$ref"]), root, where, problems)
    if "anyOf" in schema:
        _check_any_of(value, schema["anyOf"], root, where, problems)
    if "const" in schema and value != schema["const"]:
        problems.append(f"{where}: expected {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(value, n) for n in names):
            problems.append(f"{where}: expected {' or '.join(names)}, got {type(value).__name__}")
            return
    if isinstance(value, dict):
        _check_object(value, schema, root, where, problems)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], root, f"{where}[{i}]", problems)


def _check_any_of(
    value: Any,
    options: Sequence[Mapping[str, Any]],
    root: Mapping[str, Any],
    where: str,
    problems: list[str],
) -> None:
    branches: list[list[str]] = []
    for option in options:
        found: list[str] = []
        _check(value, option, root, where, found)
        if not found:
            return
        branches.append(found)
    closest: list[str] = min(branches, key=len)  # the branch that came closest explains best
    problems.extend(closest)


def _check_object(
    value: Mapping[str, Any],
    schema: Mapping[str, Any],
    root: Mapping[str, Any],
    where: str,
    problems: list[str],
) -> None:
    problems.extend(
        f"{where}: missing {key!r}" for key in schema.get("required", []) if key not in value
    )
    props: Mapping[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in props:
            _check(item, props[key], root, f"{where}.{key}", problems)
        elif extra is False:
            problems.append(f"{where}: unexpected key {key!r}")
        elif isinstance(extra, Mapping):
            _check(item, extra, root, f"{where}.{key}", problems)


# -- tables ----------------------------------------------------------------------------------


def _generic_rows(name: str, result: Mapping[str, Any]) -> list[Row]:
    return [Row(key, f"{value:g}", key=f"{name}.{key}") for key, value in flatten(result)]


def results_table(
    results: Mapping[str, Any],
    suites: Mapping[str, ModuleType],
    checks: Sequence[Mapping[str, Any]],
    *,
    wide: bool = False,
) -> Listing:
    """The summary: one block per suite, each figure beside its same-run reference and target."""
    by_key: dict[str, list[Mapping[str, Any]]] = {}
    for check in checks:
        by_key.setdefault(check["key"], []).append(check)
    shown: set[str] = set()
    rows: list[list[str | Text]] = []
    for name, module in suites.items():
        if name not in results:
            continue
        make = getattr(module, "rows", None)
        lines: list[Row] = make(results[name]) if make else _generic_rows(name, results[name])
        for i, line in enumerate(lines):
            found = by_key.get(line.key or "", [])
            if found:
                shown.add(found[0]["key"])
            first = name if i == 0 else ""
            rows.append([first, line.metric, line.value, line.reference, *_verdicts(found)])
    for key, found in by_key.items():  # targets on figures no row shows
        if key not in shown:
            value = found[0]["value"]
            shown_value = "—" if value is None else f"{value:g}"
            label = "; ".join(c["label"] for c in found)
            rows.append(["", key, shown_value, label, *_verdicts(found)])
    columns = [
        Column("SUITE"),
        Column("METRIC", fold=True, ratio=3),
        Column("VALUE", fold=True, ratio=3),
        # on a narrow terminal the reference gives way (`-o wide` keeps it), so the metrics
        # keep room for their model ids
        Column("REFERENCE (SAME RUN)", fold=True, ratio=4, drop=1),
        Column("TARGET"),
        Column("RESULT"),
    ]
    return Listing(columns, rows, title="duplexctl bench", wide=wide)


def _verdicts(checks: Sequence[Mapping[str, Any]]) -> tuple[str, Text]:
    """The TARGET and RESULT cells for the targets on one figure (usually one)."""
    goals = ", ".join(f"{'≤' if c['op'] == '<=' else '≥'} {c['threshold']:g}" for c in checks)
    result = Text()
    for i, check in enumerate(checks):
        if i:
            result.append(", ")
        result.append_text(_NA if check["pass"] is None else _PASS if check["pass"] else _FAIL)
    return goals, result


def summary_lines(report: Mapping[str, Any]) -> RenderableType:
    """Skipped and failed suites, and the target tally."""
    out: list[RenderableType] = []
    suites = report["suites"]
    for name, reason in suites["skipped"].items():
        out.append(Text(f"skipped {name}: {reason}", style="yellow"))
    for name, message in suites["failed"].items():
        lines = str(message).splitlines() or [""]
        more = f" … ({len(lines) - 1} more lines in the report)" if len(lines) > 1 else ""
        out.append(Text(f"failed {name}: {lines[0]}{more}", style="bold red"))
    checks = report["targets"]
    passed = sum(1 for c in checks if c["pass"] is True)
    failed = sum(1 for c in checks if c["pass"] is False)
    missing = sum(1 for c in checks if c["pass"] is None)
    out.append(Text(f"targets: {passed} pass, {failed} fail, {missing} n/a"))
    return Group(*out)


# -- compare ---------------------------------------------------------------------------------

# The last matching segment rule decides; unknown keys get no colour.
_LOWER_IS_BETTER = ("_ms", "rtf", "wer", "underrun", "late_frames", "_mb", "fal_ratio", "jitter")
_HIGHER_IS_BETTER = ("max_sessions", "memory_returned_pct", "ideal_sessions")
_NOT_COMPARED = ("meta.host", "meta.duration_s", "schema_version")


def direction(key: str) -> int:
    """-1: lower is better, +1: higher is better, 0: unknown (no colour)."""
    for segment in reversed(key.split(".")):
        if any(token in segment for token in _HIGHER_IS_BETTER):
            return 1
        if any(token in segment for token in _LOWER_IS_BETTER):
            return -1
    return 0


def compare_rows(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, float, float]]:
    """(key, old, new) for every numeric key present in both reports, in the new one's order."""
    before = dict(flatten(old))
    return [
        (key, before[key], value)
        for key, value in flatten(new)
        if key in before and not key.startswith(_NOT_COMPARED)
    ]


def compare_table(old: Mapping[str, Any], new: Mapping[str, Any], title: str) -> Listing:
    rows: list[list[str | Text]] = []
    for key, a, b in compare_rows(old, new):
        delta = b - a
        pct = f"{100 * delta / abs(a):+.1f} %" if a else ""
        better = direction(key)
        if delta == 0:
            mark = Text("=", style="dim")
        else:
            arrow = "▲" if delta > 0 else "▼"
            style = "dim" if not better else "green" if (delta > 0) == (better > 0) else "red"
            word = {"green": " better", "red": " worse"}.get(style, "")
            mark = Text(f"{arrow}{word}", style=style)
        rows.append([key, f"{a:g}", f"{b:g}", f"{delta:+.4g}", pct, mark])
    return table("KEY", "OLD", "NEW", "Δ", "Δ %", "", rows=rows, title=title, no_wrap=("KEY",))
