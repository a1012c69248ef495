"""The package's layering: no import circle in lawshift/ and benchmarks/, and every lawshift module imports only
from its own subpackage and the ones its row of ALLOWED names (imports inside functions included)."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from lawshift.core.codedeps import REPO

PACKAGES = ("lawshift", "benchmarks")
# Which subpackages each may import (its own always): the tree's one-way map, README "The package".
ALLOWED = {
    "core": set(),
    "task": {"core"},
    "engines": {"core"},
    "sample": {"core", "task", "engines"},
    "train": {"core", "task"},
    "evaluate": {"core", "task", "engines"},
    "experiments": {"core", "evaluate"},
    "rl": {"core", "task", "engines", "train"},
}


def module_name(path: Path, root: Path = REPO) -> str:
    name = path.relative_to(root).with_suffix("").as_posix().replace("/", ".")
    return name.removesuffix(".__init__")


def project_imports(path: Path, root: Path = REPO) -> set[str]:
    """The project modules (dotted names) `path` imports, wherever in the file the import stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
    return {name for name in found if (root / (name.replace(".", "/") + ".py")).is_file()}


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")]
    return {module_name(p, root): project_imports(p, root) for p in files}


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


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """`a -> b` for each import of a lawshift module from a subpackage its row of ALLOWED does not name."""
    bad = []
    for module, deps in sorted(graph.items()):
        parts = module.split(".")
        if parts[0] != "lawshift" or len(parts) < 3:
            continue  # lawshift/__init__.py wires the pins in; benchmarks may use anything
        for dep in sorted(deps):
            sub = dep.split(".")[1] if dep.startswith("lawshift.") else None
            if sub is not None and sub != parts[1] and sub not in ALLOWED[parts[1]]:
                bad.append(f"{module} -> {dep}")
    return bad


@pytest.mark.parametrize("graph, cycle", [
    ({"a": {"b"}, "b": set()}, None),
    ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
    ({"a": {"a"}}, ["a", "a"]),
    ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),  # a diamond is no circle
])
def test_find_cycle(graph, cycle):
    assert find_cycle(graph) == cycle


@pytest.mark.parametrize("graph, bad", [
    ({"lawshift.sample.sampling": {"lawshift.engines.backends", "lawshift.task.data"}}, []),
    ({"lawshift.core.files": {"lawshift.task.data"}}, ["lawshift.core.files -> lawshift.task.data"]),
    ({"lawshift.train.training": {"lawshift.engines.backends"}},
     ["lawshift.train.training -> lawshift.engines.backends"]),
    ({"lawshift.evaluate.report": {"lawshift.experiments.results"}},
     ["lawshift.evaluate.report -> lawshift.experiments.results"]),
    ({"lawshift.task.data": {"lawshift.task.answers"}}, []),  # within a subpackage
    ({"benchmarks.train": {"lawshift.experiments.results"}}, []),
])
def test_layer_violations(graph, bad):
    assert layer_violations(graph) == bad


def test_the_project_has_no_import_circle():
    graph = import_graph()
    assert "lawshift.engines.generation" in graph["lawshift.engines.vllm_backend"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_every_subpackage_has_a_row_and_lawshift_has_no_flat_module():
    subs = {p.name for p in (REPO / "lawshift").iterdir() if (p / "__init__.py").is_file()}
    assert subs == set(ALLOWED)
    assert [p.name for p in (REPO / "lawshift").glob("*.py")] == ["__init__.py"]


def test_every_import_points_down_the_layers():
    graph = import_graph()
    assert "lawshift.sample.sampling" in graph and len(graph) > 40
    assert layer_violations(graph) == []


def test_a_planted_upward_import_fails(tmp_path):
    """A function-level import of experiments from core, in a copy of the package, is caught."""
    shutil.copytree(REPO / "lawshift", tmp_path / "lawshift")
    planted = tmp_path / "lawshift" / "core" / "files.py"
    planted.write_text(planted.read_text(encoding="utf-8")
                       + "\n\ndef _up():\n    from lawshift.experiments.results import main\n", encoding="utf-8")
    assert layer_violations(import_graph(tmp_path)) == ["lawshift.core.files -> lawshift.experiments.results"]
