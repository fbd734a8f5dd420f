"""The package's shape: imports flow one way (no circle anywhere in the package, nothing imports a CLI module),
and the DataModule loads the generator only for ``format: synthetic``."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def import_graph() -> dict[str, set[str]]:
    """``module -> yolopose modules it imports`` anywhere in its file (top level, functions, TYPE_CHECKING)."""
    files = {}
    for f in (ROOT / "yolopose").rglob("*.py"):
        rel = f.relative_to(ROOT).with_suffix("")
        files[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = f
    graph: dict[str, set[str]] = {}
    for name, f in files.items():
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                deps |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_sees_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_data_layer_and_synthetic_generator_have_no_import_circle() -> None:
    graph = import_graph()
    assert "yolopose.data.datamodule" in graph and len(graph) > 20
    ours = [c for c in cycles(graph) if any(m.startswith(("yolopose.data", "yolopose.synthetic")) for m in c)]
    assert ours == []


CLI_MODULES = {"yolopose.cli", "yolopose.predict", "yolopose.export.cli", "yolopose.synthetic.__main__"}


def test_no_import_circle_anywhere_in_the_package() -> None:
    assert cycles(import_graph()) == []


def test_no_module_imports_a_command_line_module() -> None:
    graph = import_graph()
    clis = CLI_MODULES | {m for m in graph if m.startswith("yolopose.tools.")}
    assert CLI_MODULES <= set(graph)
    upward = {m: sorted(deps & clis) for m, deps in graph.items() if m not in clis and deps & clis}
    assert upward == {}


def test_synthetic_generator_uses_the_data_layer_only_for_the_coco_topology() -> None:
    graph = import_graph()
    used = {d for m, deps in graph.items() if m.startswith("yolopose.synthetic") for d in deps
            if not d.startswith("yolopose.synthetic")}
    assert used == {"yolopose.data.coco_person"}


def test_datamodule_imports_the_generator_only_for_synthetic_data() -> None:
    code = ("import sys, yolopose.data.datamodule, yolopose.data.coco;"
            "print(sorted(m for m in sys.modules if m.startswith('yolopose') and 'synthetic' in m))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
