"""No import cycle inside `duplexctl.tui`: app -> screens -> widgets -> views, never back.

Every import counts, the ones under ``if TYPE_CHECKING:`` and inside functions included: a
cycle hidden behind either still ties the modules together (and breaks the moment someone
moves the import). The graph is read from the source with `ast`, nothing is imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "duplexctl.tui"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    root = SRC / Path(*PACKAGE.split("."))
    return {_module_name(p): p for p in sorted(root.rglob("*.py"))}


def _imported(module: str, path: Path, known: Iterable[str]) -> set[str]:
    """The modules of `known` that `module` imports anywhere in its source."""
    known = set(known)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package upwards
                package = module.split(".") if is_package else module.split(".")[:-1]
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import name` imports pkg, and pkg.name when that is a module
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(name for name in names if name in known)
    found.discard(module)  # a package's `from . import sub` names the package itself too
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(name, path, modules) for name, path in modules.items()}


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module, or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _describe(graph: Mapping[str, Iterable[str]], group: list[str]) -> str:
    members = set(group)
    edges = [f"{a} -> {b}" for a in group for b in sorted(graph[a]) if b in members]
    return "; ".join(edges)


def test_the_tui_has_no_import_cycle() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert not found, (
        "import cycles in duplexctl.tui (TYPE_CHECKING and function imports count):\n"
        + ("\n".join(_describe(graph, group) for group in found))
    )


def test_the_graph_sees_every_kind_of_import() -> None:
    """The check reads the real imports: top-level, TYPE_CHECKING and function-local ones."""
    graph = import_graph()
    assert {"duplexctl.tui.app", "duplexctl.tui.views", "duplexctl.tui.screens.dashboard"} <= set(
        graph
    )
    assert "duplexctl.tui.screens.dashboard" in graph["duplexctl.tui.app"]
    assert "duplexctl.tui.views" in graph["duplexctl.tui.widgets.panel"]


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_imports_hidden_in_type_checking_blocks_and_functions_count(tmp_path: Path) -> None:
    code = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from duplexctl.tui.app import DashApp\n"
        "def f():\n"
        "    from duplexctl.tui.screens import dashboard\n"
        "    from . import views\n"
    )
    path = tmp_path / "panel.py"
    path.write_text(code)
    known = {
        "duplexctl.tui.app",
        "duplexctl.tui.screens",
        "duplexctl.tui.screens.dashboard",
        "duplexctl.tui.widgets.views",
        "duplexctl.tui.widgets",
    }
    assert _imported("duplexctl.tui.widgets.panel", path, known) == known
