"""The docs (README.md, docs/*.md) against the code: every make target, `python -m` module, stage, params key and
repository file they name exists, so the docs cannot drift from the code. Also the README's size and the docstrings'
length the repository keeps to."""

from __future__ import annotations

import ast
import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from lawshift.core.params import Params

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MAKE = re.compile(r"(?:^|`|\$ )make ([a-z][\w-]*)", re.M)  # in code: prose says "make a ..." too
PYTHON_M = re.compile(r"python -m ((?:lawshift|benchmarks)(?:\.\w+)*)(?: ([a-z_|\\]+))?")
DVC_STAGE = re.compile(r"\bdvc (?:repro|commit|status)(?: -f)* ([a-z_]+(?:@[\w<>]+)?)")
AT_STAGE = re.compile(r"`([a-z_]+)@(?:round\d+|<round>|<model>)")
PARAM = re.compile(r"(?<![\w/.<-])((?:seed|data|model|sample|filter|train|eval|grpo|rounds)(?:\.[\w<>*]+)+)")
FILE = re.compile(r"(?<![=\w/])((?:stages|lawshift|benchmarks|tests|docs|prompts|profiles)/[\w/.-]+"
                  r"\.(?:py|md|yaml|json))\b")
NOT_KEYS = {"json", "jsonl", "csv", "py", "yaml", "md", "tsv", "sbatch"}  # `filter.json` is a file, not a key


def doc_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([a-z][\w-]*):", text, re.M))


def stage_names() -> set[str]:
    return set(yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"])


def key_exists(key: str) -> bool:
    """Whether `key` (dotted, `<x>` for any round, `*` for any key) names a field of the typed params."""
    node: typing.Any = Params
    for part in key.split("."):
        if part == "*":
            return True
        hints = typing.get_type_hints(node) if dataclasses.is_dataclass(node) else {}
        if typing.get_origin(node) is dict:  # rounds: any round name, then a round's fields
            node = typing.get_args(node)[1]
            continue
        if part not in hints:
            return False
        node = hints[part]
    return True


def named(pattern: re.Pattern, group: int = 1) -> list[tuple[str, str]]:
    return [(path.name, m.group(group)) for path in DOCS for m in pattern.finditer(doc_text(path))]


@pytest.mark.parametrize("key, exists", [
    ("sample.num_samples", True), ("rounds.<round>.keep_previous", True), ("rounds.round2.policy", True),
    ("model.tiny.term_noise", True), ("sample.*", True), ("sample.nope", False), ("train.lora_r.x", False),
    ("rounds.round1.nope", False),
])
def test_key_exists(key, exists):
    assert key_exists(key) is exists


def test_the_docs_name_only_make_targets_that_exist():
    targets, found = make_targets(), named(MAKE)
    assert {"repro", "test"} <= {t for _, t in found}
    assert [(doc, t) for doc, t in found if t not in targets] == []


def test_the_docs_name_only_python_modules_that_exist():
    found = [(path.name, m.group(1), m.group(2)) for path in DOCS for m in PYTHON_M.finditer(doc_text(path))]
    assert found
    missing = []
    for doc, module, sub in found:
        file = REPO / (module.replace(".", "/") + ".py")
        package = REPO / module.replace(".", "/") / "__main__.py"
        if not (file.is_file() or package.is_file()):
            missing.append((doc, module))
        if module == "benchmarks" and sub:
            missing += [(doc, f"benchmarks {s}") for s in re.split(r"\\?\|", sub)
                        if s and not (REPO / "benchmarks" / f"{s}.py").is_file()]
    assert missing == []


def test_the_docs_name_only_stages_that_exist():
    stages, found = stage_names(), named(DVC_STAGE) + named(AT_STAGE)
    assert found
    assert [(doc, s) for doc, s in found if s.split("@")[0] not in stages] == []


def test_the_docs_name_only_params_keys_that_exist():
    found = [(doc, key) for doc, key in named(PARAM) if key.split(".")[-1] not in NOT_KEYS]
    assert len(found) > 20
    assert [(doc, key) for doc, key in found if not key_exists(key)] == []


def test_the_docs_name_only_files_that_exist():
    found = named(FILE)
    assert found
    assert [(doc, f) for doc, f in found if "<" not in f and "*" not in f and not (REPO / f).exists()] == []


def test_every_doc_is_reachable_from_the_readme():
    readme = doc_text(REPO / "README.md")
    assert [p.name for p in DOCS[1:] if f"docs/{p.name}" not in readme] == []


def test_the_readme_fits_on_a_few_screens():
    assert len((REPO / "README.md").read_bytes()) <= 12 * 1024


@pytest.mark.parametrize("path", sorted(p.relative_to(REPO).as_posix() for d in ("lawshift", "stages", "benchmarks")
                                        for p in (REPO / d).rglob("*.py")))
def test_modules_are_short_with_short_docstrings(path):
    source = (REPO / path).read_text(encoding="utf-8")
    doc = ast.get_docstring(ast.parse(source), clean=False) or ""
    assert doc, f"{path} has no module docstring"
    assert len(doc.splitlines()) <= 12 and len(source.splitlines()) <= 350
