"""LawShift data layer: validated cases, articles files of both shapes, and the benchmark's folders.

A LawShift root holds `training_set.json` and one folder per change type, each with `original.json`,
`poisoned.json`, `articles_original.json` and `articles_poisoned.json`. Records look like

    {"fact": "…", "relevant_articles": ["354-0-0"], "charge": "容留他人吸毒", "prison_time": 7}

with `prison_time` in months, 10000 = life imprisonment, 10001 = death. Every bad record raises `InputError`
naming the file, the record index and the field.

    python -m lawshift.task.data check /path/to/LawShift   # the layout the stages expect; one line per problem
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from lawshift.core.files import InputError, read_json

log = logging.getLogger(__name__)

SPLITS = ("original", "poisoned")
LABELS = Path(__file__).with_name("labels.json")  # the benchmark's folders and their label types (package data)
FOLDER_FILES = ("original.json", "poisoned.json", "articles_original.json", "articles_poisoned.json")


@dataclass(frozen=True)
class Case:
    fact: str
    relevant_articles: tuple[str, ...]
    charge: str
    prison_time: int

    @property
    def case_id(self) -> str:
        """Stable id: a hash of the fact and the cited articles (labels excluded on purpose)."""
        key = json.dumps([self.fact, list(self.relevant_articles)], ensure_ascii=False)
        return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {"fact": self.fact, "relevant_articles": list(self.relevant_articles), "charge": self.charge,
                "prison_time": self.prison_time}


def case_from_record(rec: object, path: str | Path, index: int) -> Case:
    if not isinstance(rec, dict):
        raise InputError(path, f"expected an object, got {type(rec).__name__}", index=index)
    fact = rec.get("fact")
    if not isinstance(fact, str) or not fact.strip():
        raise InputError(path, "missing" if "fact" not in rec else "must be a non-empty string", index, "fact")
    arts = rec.get("relevant_articles")
    if not isinstance(arts, list) or not all(isinstance(a, str) for a in arts):
        why = "missing" if "relevant_articles" not in rec else "must be a list of strings"
        raise InputError(path, why, index, "relevant_articles")
    charge = rec.get("charge")
    if not isinstance(charge, str):
        raise InputError(path, "missing" if "charge" not in rec else "must be a string", index, "charge")
    term = rec.get("prison_time")
    if not isinstance(term, int) or isinstance(term, bool) or term < 0:
        why = "missing" if "prison_time" not in rec else f"must be an integer >= 0, got {term!r}"
        raise InputError(path, why, index, "prison_time")
    return Case(fact, tuple(arts), charge, term)


def load_cases(path: str | Path, allow_empty: bool = False) -> list[Case]:
    """Load and validate a JSON list of case records."""
    data = read_json(path)
    if not isinstance(data, list):
        raise InputError(path, f"expected a JSON list of cases, got {type(data).__name__}")
    if not data and not allow_empty:
        raise InputError(path, "no cases (empty list)")
    return [case_from_record(rec, path, i) for i, rec in enumerate(data)]


def load_articles(path: str | Path) -> dict[str, str]:
    """Load an articles file: a JSON object {id: text} or a JSON list [{"id": …, "content": …}]."""
    data = read_json(path)
    if isinstance(data, dict):
        for key, text in data.items():
            if not isinstance(text, str):
                raise InputError(path, f"article text must be a string, got {type(text).__name__}", field=key)
        return dict(data)
    if isinstance(data, list):
        out = {}
        for i, item in enumerate(data):
            if not isinstance(item, dict):
                raise InputError(path, "expected an object with 'id' and 'content'", index=i)
            for key in ("id", "content"):
                if not isinstance(item.get(key), str):
                    raise InputError(path, "missing" if key not in item else "must be a string", i, key)
            out[item["id"]] = item["content"]
        return out
    raise InputError(path, f"articles must be a JSON object {{id: text}} or a list of {{id, content}}, "
                           f"got {type(data).__name__}")


@dataclass
class ArticleLookup:
    """Article texts for cases, counting ids the articles file lacks (or refusing them when strict)."""

    articles: dict[str, str]
    path: str
    strict: bool = False
    missing: int = 0

    def for_case(self, case: Case, index: int | None = None, source: str | Path | None = None) -> list[tuple[str, str]]:
        found = []
        for art_id in case.relevant_articles:
            text = self.articles.get(art_id)
            if text is None:
                if self.strict:
                    raise InputError(source or self.path, f"article id {art_id!r} not in {self.path}", index,
                                     "relevant_articles")
                self.missing += 1
                log.warning("article id %r not in %s", art_id, self.path)
                continue
            found.append((art_id, text))
        return found


@dataclass(frozen=True)
class FolderLabel:
    type: str  # e.g. "T2.1"
    name: str  # folder name, e.g. "action_explicit_extend"
    label: str  # V, NV, TU, TD, XT or NX


@cache
def folder_labels() -> dict[str, FolderLabel]:
    """The 31 LawShift folders and their expected label types (package data from the benchmark's label.json)."""
    raw = json.loads(LABELS.read_text(encoding="utf-8"))
    return {r["name"]: FolderLabel(r["type"], r["name"], r["label"]) for r in raw}


@dataclass
class Folder:
    name: str
    label: str
    path: Path

    def cases(self, split: str) -> list[Case]:
        return load_cases(self.path / f"{split}.json")

    def articles(self, split: str) -> dict[str, str]:
        return load_articles(self.path / f"articles_{split}.json")


def discover_folders(root: str | Path, only: list[str] | None = None) -> list[Folder]:
    """Every folder under `root` with a known LawShift name, sorted; unknown names are skipped with a warning."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "LawShift root is not a directory")
    labels = folder_labels()
    if only:
        unknown = [n for n in only if n not in labels]
        if unknown:
            raise InputError(root, f"unknown folder name(s) {unknown}; known: see lawshift/task/labels.json",
                             field="eval.folders")
    folders = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name not in labels:
            log.warning("skipping folder %s: not a LawShift change type", sub)
            continue
        if only and sub.name not in only:
            continue
        for name in FOLDER_FILES:
            if not (sub / name).is_file():
                raise InputError(sub / name, "file not found (every LawShift folder needs "
                                             f"{', '.join(FOLDER_FILES)})")
        folders.append(Folder(sub.name, labels[sub.name].label, sub))
    if only:
        absent = sorted(set(only) - {f.name for f in folders})
        if absent:
            raise InputError(root, f"folder(s) not found: {absent}", field="eval.folders")
    return folders


def training_cases(root: str | Path) -> list[Case]:
    return load_cases(Path(root) / "training_set.json")


TRAIN_ARTICLES = "criminal_law_articles.json"  # profiles/reference.yaml's data.train_articles, under the root


def check_root(root: str | Path, only: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """A LawShift root against the layout the stages read: (problems, facts), one line each. Every file is loaded
    and validated; `only` restricts the folders checked (default: all 31 of labels.json)."""
    root = Path(root)
    if not root.is_dir():
        return [f"{root}: not a directory (the root of the LawShift release)"], []
    problems, facts = [], []

    def load(path: Path, loader, what: str):
        if not path.is_file():
            problems.append(f"{path}: missing ({what})")
            return None
        try:
            return loader(path)
        except InputError as err:
            problems.append(str(err))
            return None

    train = load(root / "training_set.json", load_cases, "the training cases: sample, filter, train")
    load(root / TRAIN_ARTICLES, load_articles, "the whole Criminal Law: profiles/reference.yaml's data.train_articles")
    labels = folder_labels()
    unknown = sorted(set(only) - set(labels))
    problems += [f"{root / name}: not a LawShift folder name (lawshift/task/labels.json)" for name in unknown]
    counts = {split: 0 for split in SPLITS}
    for name in only or labels:
        if name in unknown:
            continue
        folder, label = root / name, labels[name]
        if not folder.is_dir():
            problems.append(f"{folder}: missing (LawShift folder {label.type}, label {label.label})")
            continue
        for split in SPLITS:
            cases = load(folder / f"{split}.json", load_cases, f"the {split} split's cases")
            counts[split] += len(cases or [])
            load(folder / f"articles_{split}.json", load_articles, f"the {split} split's articles")
    wanted = set(only or labels)
    facts.append(f"{root}: {len(train or [])} training cases; {len(wanted)} folders checked, "
                 f"{counts['original']} original and {counts['poisoned']} poisoned cases")
    extra = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in labels)
    facts += [f"{root / name}: not a LawShift folder, ignored by the stages" for name in extra]
    return problems, facts


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lawshift.task.data", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check a LawShift root's layout and records; exit 1 naming what is wrong")
    check.add_argument("root", help="the root of the LawShift release (data.root)")
    check.add_argument("--folders", nargs="+", default=[], metavar="NAME",
                       help="check only these folders (as eval.folders; default: all 31)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    problems, facts = check_root(args.root, args.folders)
    for line in facts:
        print(line)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if problems:
        print(f"{args.root}: {len(problems)} problem(s); the full release: docs/data.md (The full dataset)",
              file=sys.stderr)
        return 1
    print(f"{args.root}: the LawShift layout, complete")
    return 0


if __name__ == "__main__":
    sys.exit(main())
