"""lawshift/codedeps.py: the modules a file imports (at any depth of the file), and the project's import graph
(lawshift/ and benchmarks/) has no circle, imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lawshift.codedeps import PACKAGE, REPO, imported_modules

PACKAGES = ("lawshift", "benchmarks")


def project_imports(path: Path) -> set[str]:
    """The project modules (dotted names) `path` imports, wherever in the file the import stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
    return {name for name in found if (REPO / (name.replace(".", "/") + ".py")).is_file()}


def import_graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (REPO / pkg).glob("*.py")]
    return {p.relative_to(REPO).with_suffix("").as_posix().replace("/", "."): project_imports(p) for p in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` as [a, b, ..., a], or None (depth-first search, colouring the nodes)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.mark.parametrize("graph, cycle", [
    ({"a": {"b"}, "b": set()}, None),
    ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
    ({"a": {"a"}}, ["a", "a"]),
    ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),  # a diamond is no circle
])
def test_find_cycle(graph, cycle):
    assert find_cycle(graph) == cycle


def test_the_project_has_no_import_circle():
    graph = import_graph()
    assert "lawshift.backends" in graph and "lawshift.generation" in graph["lawshift.vllm_backend"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_a_function_level_import_counts(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from lawshift.vllm_backend import VLLMBackend\n", encoding="utf-8")
    assert imported_modules(module) == {PACKAGE / "vllm_backend.py"}
    assert project_imports(module) == {"lawshift.vllm_backend"}
