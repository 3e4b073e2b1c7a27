"""The package layering docs/architecture.md draws, checked on every import (TYPE_CHECKING and
function-local ones included), so a shortcut across a seam fails here rather than in review."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[str]:
    """Every module `path` imports, absolute, wherever the import statement sits."""
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else None
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = (package or module_name(path)).split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def modules(package: str) -> list[Path]:
    return sorted((SRC / package.replace(".", "/")).rglob("*.py"))


def offenders(package: str, forbidden: str, allowed: frozenset[str] = frozenset()) -> list[str]:
    found = []
    for path in modules(package):
        name = module_name(path)
        if name in allowed:
            continue
        bad = sorted({m for m in imports(path) if m == forbidden or m.startswith(forbidden + ".")})
        found += [f"{name} imports {m}" for m in bad]
    return found


def test_the_orchestrator_imports_nothing_from_the_worker() -> None:
    assert offenders("duplexd.orchestrator", "duplexd.tts") == []


@pytest.mark.parametrize(
    "package", ["duplexd.tts", "duplexd.orchestrator", "duplexd.rpc", "duplexd.asr", "duplexd.vad"]
)
def test_fleet_is_imported_only_by_the_daemons_app_modules(package: str) -> None:
    allowed = frozenset({"duplexd.tts.app", "duplexd.orchestrator.app"})
    assert offenders(package, "duplexd.fleet", allowed) == []


def test_fleet_does_not_reach_into_the_daemons_edges() -> None:
    """The announcer renders the worker's description; discovery fills the orchestrator's
    Registry: neither calls a daemon's gRPC/HTTP edge."""
    for edge in ("duplexd.tts.server", "duplexd.orchestrator.server", "duplexd.tts.app",
                 "duplexd.orchestrator.app"):  # fmt: skip
        assert offenders("duplexd.fleet", edge) == []


def test_daemons_never_import_the_console_or_the_dev_kit() -> None:
    for package in ("duplexd.tts", "duplexd.orchestrator", "duplexd.fleet", "duplexd.rpc"):
        assert offenders(package, "duplexctl") == []
        assert offenders(package, "duplexd.devkit") == []


def test_the_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    """A checker that misses TYPE_CHECKING or function-local imports could never fail."""
    path = SRC / "duplexd" / "orchestrator" / "_probe_for_test.py"
    path.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from duplexd.tts.worker import Worker\n"
        "def f():\n    from ..tts import catalog\n"
    )
    try:
        found = offenders("duplexd.orchestrator", "duplexd.tts")
    finally:
        path.unlink()
    assert "duplexd.orchestrator._probe_for_test imports duplexd.tts.worker" in found
    assert "duplexd.orchestrator._probe_for_test imports duplexd.tts.catalog" in found
