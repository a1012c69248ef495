"""The code a stage runs: its script, every `lawshift` module it reaches by imports, and the package data they name.

Two users. Each resumable stage puts `code_digest(stage)` in its journal header, so a partial result made by other
code is never continued (a rerun after a code change starts afresh and says so). tests/test_dvc.py checks that
every stage's dvc.yaml deps cover `code_files(stage)`, so a code change always reruns the stages it affects.

    code_files("sample")    # ['lawshift/__init__.py', 'lawshift/task/answers.py', …, 'stages/sample.py']
    code_digest("sample")   # sha256 over those files' bytes

The walk reads the source (ast), so it finds imports inside functions too, and it needs no import to run.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

from lawshift.core.files import file_digest

REPO = Path(__file__).resolve().parents[2]  # the checkout: stages/ and lawshift/ side by side
PACKAGE = REPO / "lawshift"


def imported_modules(path: Path) -> set[Path]:
    """The lawshift modules one file imports, in any form and at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lawshift":
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "lawshift"]
        for name in names:
            file = REPO / (name.replace(".", "/") + ".py")
            if file.is_file():
                found.add(file)
            elif (REPO / name.replace(".", "/") / "__init__.py").is_file():
                found.add(REPO / name.replace(".", "/") / "__init__.py")
    return found


def packages_of(module: Path) -> set[Path]:
    """The `__init__.py` of every package above `module` up to lawshift/: Python runs each on the import."""
    return {d / "__init__.py" for d in module.parents if d == PACKAGE or PACKAGE in d.parents}


def data_files(module: Path) -> set[Path]:
    """Package data files (non-Python files beside `module`) whose names appear as string literals in it."""
    data = {p.name: p for p in module.parent.iterdir() if p.is_file() and p.suffix != ".py"}
    strings = {n.value for n in ast.walk(ast.parse(module.read_text(encoding="utf-8")))
               if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return {data[s] for s in strings if s in data}


@cache
def code_files(stage: str) -> tuple[str, ...]:
    """Repo-relative paths of the code stage `stage` (a script name in stages/) runs, sorted."""
    script = REPO / "stages" / f"{stage}.py"
    seen, todo = set(), [script]
    while todo:
        found = imported_modules(todo.pop())
        found |= {init for module in found for init in packages_of(module)}  # each runs, and imports in turn
        for module in found - seen:
            seen.add(module)
            todo.append(module)
    needed = {script, *seen}
    for module in seen:
        needed |= data_files(module)
    return tuple(sorted(p.relative_to(REPO).as_posix() for p in needed))


def code_digest(stage: str) -> str:
    """sha256 over the path and bytes of every file of `code_files(stage)`."""
    h = hashlib.sha256()
    for rel in code_files(stage):
        h.update(f"{rel}\0{file_digest(REPO / rel)}\0".encode())
    return h.hexdigest()
