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


# ---- docs that read whole: no paragraph starts mid-sentence or stops mid-sentence --------------------------------

NOT_PROSE = re.compile(r"^(#|\||- |\* |\d+\. |    |>|<!--|\$ )")


def blocks(text: str) -> list[tuple[int, str, str]]:
    """(first line, kind, text) of each block between blank lines: `code` (fenced or indented), `heading`, `prose`,
    or `other` (a table, list or quote, or a block holding such lines)."""
    out, block, fence = [], [], None
    for number, line in enumerate([*text.splitlines(), ""], start=1):
        if fence is not None:
            if line.startswith("```"):
                out.append((fence, "code", "")), block.clear()
                fence = None
            continue
        if line.startswith("```"):
            fence = number
            continue
        if line.strip():
            block.append((number, line))
            continue
        if block:
            lines = [b for _, b in block]
            kind = ("code" if all(b.startswith("    ") for b in lines) else "heading" if lines[0].startswith("#")
                    else "other" if any(NOT_PROSE.match(b) for b in lines) else "prose")
            out.append((block[0][0], kind, " ".join(b.strip() for b in lines)))
        block = []
    return out


def paragraphs(text: str) -> list[tuple[int, str]]:
    return [(number, para) for number, kind, para in blocks(text) if kind == "prose"]


def broken_paragraphs(text: str) -> list[str]:
    """`line: why` for each paragraph that starts in lower case (unless it goes on after a code block) or stops
    without closing its sentence (unless code, a list or a table follows to finish it)."""
    bad, found = [], blocks(text)
    for i, (number, kind, para) in enumerate(found):
        if kind != "prose":
            continue
        before, after = (found[i - 1][1] if i else None), (found[i + 1][1] if i + 1 < len(found) else None)
        if para[0].islower() and before != "code":
            bad.append(f"{number}: starts mid-sentence: {para[:40]!r}")
        if not re.search(r"[.:!?)]\W*$", para) and after not in ("code", "other"):
            bad.append(f"{number}: stops mid-sentence: {para[-40:]!r}")
    return bad


PLANTED = """# A doc

A whole paragraph, which ends.

are those of that round's sampling (the base samples round 1).

The spread over seeds queues the pipeline
"""


def test_a_planted_broken_paragraph_is_caught():
    assert [line.split(":")[:2] for line in broken_paragraphs(PLANTED)] == [["5", " starts mid-sentence"],
                                                                           ["7", " stops mid-sentence"]]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_paragraph_reads_whole(path):
    assert broken_paragraphs(doc_text(path)) == []


# ---- timings: generated from the committed time files, and no figure of seconds that they contradict -------------

# a figure of seconds (230 s, 45-second, 30 seconds) or minutes (3 minutes, 2 min), in seconds
SECONDS = re.compile(r"(\d+(?:\.\d+)?)(?:( ?s\b|-second\b| seconds?\b)|[ -](?:min\b|minutes?\b))")
SUBJECTS = {"base": re.compile(r"\bbase\b|\bwarm-start\b"),
            "total": re.compile(r"\bstages\b|make repro|\bpipeline\b|\bin all\b")}


def committed_seconds() -> dict[str, float]:
    from lawshift.experiments.results import stage_seconds

    seconds = stage_seconds(REPO)
    return {"base": seconds["base"], "total": sum(seconds.values())}


def contradicted_seconds(text: str, committed: dict[str, float], slack: float = 0.2) -> list[str]:
    """Each figure of seconds (or minutes) said of the base stage or of the whole run (the subject named nearest to it
    in its sentence, outside code) that is more than `slack` off the committed time files' figure."""
    bad = []
    for number, _, para in (b for b in blocks(text) if b[1] != "code"):
        for sentence in re.split(r"(?<=[.;])\s+", para):
            for m in SECONDS.finditer(sentence):
                near = [(min(abs(s.start() - m.start()), abs(s.end() - m.end())), subject)
                        for subject, pattern in SUBJECTS.items() for s in pattern.finditer(sentence)]
                subject = min(near)[1] if near else None
                said = float(m.group(1)) * (1 if m.group(2) else 60)
                if subject and abs(said - committed[subject]) > slack * committed[subject]:
                    bad.append(f"{number}: {m.group(0)!r} for the {subject}, the time files say "
                               f"{committed[subject]:.0f} s")
    return bad


def test_a_planted_contradicted_timing_is_caught():
    committed = {"base": 230.0, "total": 312.0}
    planted = "The base stage's warm-start takes about 50 s; the whole `make repro` takes 310 s.\n"
    assert contradicted_seconds(planted, committed) == ["1: '50 s' for the base, the time files say 230 s"]
    assert contradicted_seconds("The stages took 129 s, the 45-second base included.\n", committed) == [
        "1: '129 s' for the total, the time files say 312 s", "1: '45-second' for the base, the time files say 230 s"]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_no_figure_of_seconds_the_time_files_contradict(path):
    assert contradicted_seconds(doc_text(path), committed_seconds()) == []


def test_the_readmes_timings_are_generated_from_the_time_files():
    from lawshift.experiments.results import TIMINGS, timings

    readme = doc_text(REPO / "README.md")
    start, end = TIMINGS
    assert readme.count(start) == readme.count(end) == 1
    assert readme[readme.index(start) + len(start):readme.index(end)] == timings(REPO)


# ---- docs/pipeline.md's reference column is profiles/reference.yaml ---------------------------------------------

def literal(cell: str):
    """A table cell's value: `x` -> x, null/true/false/numbers as YAML reads them, `all` -> []; None when the cell
    is prose, not a value."""
    text = re.sub(r"\s*\(.*\)$", "", cell.strip()).strip("`")
    if text == "all":
        return []
    if " " in text or not text:
        return None
    if re.fullmatch(r"-?\d+(\.\d+)?(e-?\d+)?", text):
        return float(text)
    return yaml.safe_load(text)


def reference_rows() -> list[tuple[str, str, str]]:
    """(key, the reference column's value, the profile's) for every value the table states for a key."""
    profile = yaml.safe_load((REPO / "profiles" / "reference.yaml").read_text(encoding="utf-8"))
    rows = []
    for line in doc_text(REPO / "docs" / "pipeline.md").splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != 4 or not re.fullmatch(r"`[\w.]+`( / `[\w.]+`)*", cells[0]):
            continue
        keys = re.findall(r"`([\w.]+)`", cells[0])
        keys = [k if "." in k or i == 0 else f"{keys[0].split('.')[0]}.{k}" for i, k in enumerate(keys)]
        if keys == ["rounds"]:
            rows.append(("rounds", re.findall(r"`(\w+)`", cells[1]), list(profile["rounds"])))
            continue
        values = cells[1].split(" / ")
        for key, cell in zip(keys, values * len(keys) if len(values) == 1 else values, strict=True):
            node = profile
            for part in key.split("."):
                node = node[part]
            want = literal(cell)
            if want is not None:
                rows.append((key, want, float(node) if isinstance(node, int | float) and node is not True
                             and node is not False else node))
    return rows


def test_the_reference_column_is_the_reference_profile():
    rows = reference_rows()
    assert len(rows) > 25 and {"rounds", "sample.max_samples", "eval.num_samples", "eval.temperature"} <= {
        k for k, _, _ in rows}
    assert [(k, said, real) for k, said, real in rows if said != real] == []
