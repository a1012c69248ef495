"""Every entry point answers `--help` and a bad argument without running anything: the stage scripts, each
`python -m lawshift.…` module with a main, and `python -m benchmarks …` (its subcommands included). Each must exit 0
with a usage line for `--help`, exit 2 with an error for an unknown option, and leave every file as it was. They run
in a copy of the repository (a stage that ran anyway writes there, not over the work tree's outputs), with their own
copy of the package first on the path; the test compares every file's mtime and size before and after."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ENV, REPO

SKIP = {".git", "__pycache__", ".pytest_cache", ".ruff_cache"}
# Those that import torch before they parse (about 10 s each on a busy 2-core machine): marked slow.
HEAVY = {"stages/base.py", "stages/train.py", "stages/sample.py", "stages/eval.py", "lawshift.evaluate.evalmerge",
         "lawshift.evaluate.rescore", "lawshift.sample.merge"}


def modules_with_main() -> list[str]:
    """`python -m` names of the package's modules that run something under `if __name__ == "__main__"`."""
    found = []
    for path in sorted((REPO / "lawshift").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body):
            found.append(".".join(path.relative_to(REPO).with_suffix("").parts))
    return found


def benchmark_commands() -> list[list[str]]:
    from benchmarks.__main__ import parser

    (sub,) = [a for a in parser()._actions if a.__class__.__name__ == "_SubParsersAction"]
    return [["-m", "benchmarks"], *(["-m", "benchmarks", name] for name in sub.choices),
            ["-m", "benchmarks.driver"], ["-m", "benchmarks.gpu_smoke"]]


def entry_points() -> list:
    def param(cmd: list[str], name: str):
        return pytest.param(cmd, id=name, marks=[pytest.mark.slow] if name in HEAVY else [])

    stages = [param([f"stages/{p.name}"], f"stages/{p.name}") for p in sorted((REPO / "stages").glob("*.py"))]
    modules = [param(["-m", m], m) for m in modules_with_main()]
    bench = [pytest.param(cmd, id=" ".join(cmd[1:]), marks=pytest.mark.slow) for cmd in benchmark_commands()]
    return stages + modules + bench


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    """The repository's files (no git, no venvs, no caches) in a temporary folder."""
    root = tmp_path_factory.mktemp("repo") / "repo"
    shutil.copytree(REPO, root, ignore=lambda folder, names: [n for n in names if n in SKIP or n.startswith(".venv")])
    return root


def snapshot(root) -> dict[str, tuple[int, int]]:
    """Every file under `root` (outputs and ignored files too; no caches) with its mtime and size."""
    files = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP]
        for name in names:
            stat = os.stat(os.path.join(folder, name))
            files[os.path.relpath(os.path.join(folder, name), root)] = (stat.st_mtime_ns, stat.st_size)
    return files


def test_the_package_modules_with_a_main_are_found():
    found = modules_with_main()
    assert {"lawshift.core.runinfo", "lawshift.task.data", "lawshift.experiments.reference",
            "lawshift.evaluate.rescore", "lawshift.sample.merge"} <= set(found)


@pytest.mark.parametrize("cmd", entry_points())
def test_help_and_a_bad_argument_run_nothing(cmd, copy):
    before, env = snapshot(copy), {**ENV, "PYTHONPATH": str(copy)}
    helped = subprocess.run([sys.executable, *cmd, "--help"], cwd=copy, env=env, capture_output=True, text=True,
                            timeout=300)
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert any(line.startswith("usage: ") for line in helped.stdout.splitlines()), helped.stdout[:500]
    bad = subprocess.run([sys.executable, *cmd, "--no-such-option"], cwd=copy, env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "error" in bad.stderr, bad.stdout[-1000:] + bad.stderr[-1000:]
    assert snapshot(copy) == before
