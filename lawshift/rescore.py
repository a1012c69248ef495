"""Re-score published LawShift evaluation logs with this project's answer parser and success protocol.

    python -m lawshift.rescore LOG [LOG ...] -o FILE [--term-low 36] [--term-high 120]

A LOG is the JSON list the public LawShift evaluation scripts write (`detailed_results.json`): one element per
folder, `{"folder": …, "label_type": …, "original": …, "poisoned": …}`, each split either a list of records or an
object with a `predictions` list. A record holds the model's text in `full_response` (or `response`): a string, or
a list of strings when the script drew several samples per case. Every answer is parsed by
`lawshift.answers.parse_answer` and judged by `lawshift.scoring.lawshift_success` through the eval stage's own
`score_answer`, and the metrics come from `compute_metrics`, so FILE has the layout of `metrics/<model>/eval.json`
(`overall`, `by_label`, `folders`) and a published model sits beside ours under one protocol.

FILE also gets `agreement`: on the records that carry the log's own `is_correct`, the share where this project's
success says the same. The public script counts a term strictly beyond its thresholds (> 120, < 36) and reads answers
with its own regexes, so agreement below 100% shows where the two protocols part, record by record.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lawshift import files
from lawshift.data import SPLITS, Case, folder_labels
from lawshift.evalmetrics import compute_metrics
from lawshift.evaluation import EvalItem, score_answer
from lawshift.files import InputError
from lawshift.params import EvalParams
from lawshift.results import pct
from lawshift.scoring import LABEL_TYPES

RESPONSE_KEYS = ("full_response", "response")  # the public scripts write the first; other runners the second


@dataclass(frozen=True)
class Logged:
    """One record of a log: the prompt it answers and the answer text(s) the model gave."""

    item: EvalItem
    texts: tuple[str, ...]  # one per sample drawn for this case
    published: bool | None  # the log's own is_correct; None when it has none


@dataclass(frozen=True)
class LoggedFolder:
    name: str
    path: str  # the log it came from, and its element index there: for the duplicate-folder error
    element: int
    entries: list[Logged]


# ---------------------------------------------------------------------------------------------------------------
# Reading a log


def folder_label(elem: dict, path: str, index: int) -> str:
    """The element's label type: its own `label_type` (what the published run scored with), else the label table's
    entry for the folder name. The public script writes `label_type: null` for a folder it does not know."""
    label = elem.get("label_type")
    if label is not None:
        if label not in LABEL_TYPES:
            raise InputError(path, f"unknown label type {label!r}, expected one of {LABEL_TYPES}", index, "label_type")
        return label
    known = folder_labels().get(elem["folder"])
    if known is None:
        raise InputError(path, f"unknown folder {elem['folder']!r} and no label_type: name a LawShift folder "
                               "(lawshift/labels.json) or give label_type", index, "folder")
    return known.label


def split_records(elem: dict, split: str, path: str, index: int) -> tuple[list, str]:
    """The records of one split and the JSON path to them (for error fields): a list, or an object's `predictions`."""
    if split not in elem:
        raise InputError(path, "missing", index, split)
    value = elem[split]
    if isinstance(value, list):
        return value, split
    if isinstance(value, dict) and isinstance(value.get("predictions"), list):
        return value["predictions"], f"{split}.predictions"
    raise InputError(path, f"expected a list of records or an object with a 'predictions' list, got "
                           f"{type(value).__name__}" + (" without one" if isinstance(value, dict) else ""),
                     index, split)


def response_texts(rec: dict, path: str, index: int, where: str) -> tuple[str, ...]:
    """The answer text(s) of a record. A record the public script wrote for a failed batch has `error` and no
    response: it counted as wrong there, so it is an empty (unparseable, failing) answer here, not a gap."""
    for key in RESPONSE_KEYS:
        if key in rec:
            value = rec[key]
            if isinstance(value, str):
                return (value,)
            if isinstance(value, list) and value and all(isinstance(t, str) for t in value):
                return tuple(value)
            raise InputError(path, f"must be a string or a non-empty list of strings, got {type(value).__name__}",
                             index, f"{where}.{key}")
    if isinstance(rec.get("error"), str):
        return ("",)
    raise InputError(path, "missing: a record needs the model's text in full_response or response", index,
                     f"{where}.full_response")


def published_verdict(rec: dict, path: str, index: int, where: str) -> bool | None:
    """The log's `is_correct`. null counts as absent: the public script writes it for k > 1 samples per case."""
    value = rec.get("is_correct")
    if value is not None and not isinstance(value, bool):
        raise InputError(path, f"must be true, false or null, got {value!r}", index, f"{where}.is_correct")
    return value


def gold_case(rec: dict, path: str, index: int, where: str) -> Case:
    """The case as far as a log tells it. Logs carry no gold charge, and charge "" makes score_answer's gold checks
    None, so only the label type's rule scores; `true_prison` is kept where a runner wrote it."""
    term = rec.get("true_prison")
    if term is None:
        term = 0
    elif not isinstance(term, int) or isinstance(term, bool) or term < 0:
        raise InputError(path, f"must be an integer >= 0 (months), got {term!r}", index, f"{where}.true_prison")
    fact = rec.get("fact")
    return Case(fact if isinstance(fact, str) else "", (), "", term)


def read_element(elem: object, path: str, index: int) -> LoggedFolder:
    """One folder of a log: every record of both splits, indexed in file order (id `<folder>/<split>/<i>`)."""
    if not isinstance(elem, dict):
        raise InputError(path, f"expected an object with 'folder', got {type(elem).__name__}", index)
    name = elem.get("folder")
    if not isinstance(name, str) or not name.strip():
        raise InputError(path, "missing" if "folder" not in elem else "must be a non-empty string", index, "folder")
    label = folder_label(elem, path, index)
    entries = []
    for split in SPLITS:
        records, prefix = split_records(elem, split, path, index)
        for i, rec in enumerate(records):
            where = f"{prefix}[{i}]"
            if not isinstance(rec, dict):
                raise InputError(path, f"expected an object, got {type(rec).__name__}", index, where)
            texts = response_texts(rec, path, index, where)
            prompt = rec.get("full_prompt") if isinstance(rec.get("full_prompt"), str) else ""
            item = EvalItem(f"{name}/{split}/{i}", name, label, split, i, gold_case(rec, path, index, where), prompt)
            entries.append(Logged(item, texts, published_verdict(rec, path, index, where)))
    return LoggedFolder(name, path, index, entries)


def read_log(path: str | Path) -> list[LoggedFolder]:
    data = files.read_json(path)
    if not isinstance(data, list):
        raise InputError(path, f"expected a JSON list with one object per folder, got {type(data).__name__}")
    if not data:
        raise InputError(path, "no folders (empty list)")
    return [read_element(elem, str(path), i) for i, elem in enumerate(data)]


def combine(logs: Sequence[list[LoggedFolder]]) -> list[LoggedFolder]:
    """The folders of every log; a folder twice would count its cases twice, so it is an error."""
    seen: dict[str, LoggedFolder] = {}
    for folders in logs:
        for f in folders:
            if f.name in seen:
                first = seen[f.name]
                raise InputError(f.path, f"folder {f.name!r} already read from {first.path} (record {first.element})",
                                 f.element, "folder")
            seen[f.name] = f
    return list(seen.values())


# ---------------------------------------------------------------------------------------------------------------
# Scoring: the eval stage's own path, one record per answer


def score(entries: Sequence[Logged], low: int, high: int) -> tuple[list[dict], list[tuple[str, bool, bool]]]:
    """The prediction records (as `score_answer` makes them) and, per record with an `is_correct`, (split,
    published, ours). A record with k samples is ours-correct when all k succeed: the public script's
    `is_correct` is `correct_count == num_samples`."""
    records, pairs = [], []
    for e in entries:
        scored = [score_answer(e.item, text, j, low, high) for j, text in enumerate(e.texts)]
        records += scored
        if e.published is not None:
            pairs.append((e.item.split, e.published, all(r["success"] for r in scored)))
    return records, pairs


def _share(pairs: Sequence[tuple[str, bool, bool]]) -> dict:
    agree = sum(published == ours for _, published, ours in pairs)
    return {"records": len(pairs), "agree": agree, "share": round(agree / len(pairs), 6) if pairs else None}


def agreement(pairs: Sequence[tuple[str, bool, bool]]) -> dict:
    """How often our success equals the log's is_correct: overall and per split."""
    return {**_share(pairs), **{s: _share([p for p in pairs if p[0] == s]) for s in SPLITS}}


def rescore(paths: Sequence[str | Path], low: int, high: int) -> dict:
    """The metrics of the given logs under this project's protocol, with the agreement figure and provenance."""
    folders = combine([read_log(p) for p in paths])
    records, pairs = score([e for f in folders for e in f.entries], low, high)
    return {**compute_metrics(records), "agreement": agreement(pairs),
            "rescored": {"logs": [str(p) for p in paths], "term_low": low, "term_high": high,
                         "answers": len(records)}}


def summary_line(result: dict, out: str | Path) -> str:
    o, a = result["overall"], result["agreement"]
    agree = (f"agreement with the logs' is_correct {a['agree']}/{a['records']} = {pct(a['share'])}" if a["records"]
             else "no is_correct in the logs to compare")
    return (f"rescored {len(result['folders'])} folder(s), {result['rescored']['answers']} answer(s): original "
            f"{pct(o['original'])}, poisoned {pct(o['poisoned'])}; {agree} -> {out}")


def main(argv: Sequence[str] | None = None) -> None:
    defaults = EvalParams()
    ap = argparse.ArgumentParser(prog="python -m lawshift.rescore", description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="+", metavar="LOG", help="a published LawShift results JSON (list of folders)")
    ap.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the metrics JSON")
    ap.add_argument("--term-low", type=int, default=defaults.term_low, metavar="MONTHS",
                    help=f"the protocol's low term threshold, as eval.term_low (default {defaults.term_low})")
    ap.add_argument("--term-high", type=int, default=defaults.term_high, metavar="MONTHS",
                    help=f"the protocol's high term threshold, as eval.term_high (default {defaults.term_high})")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    # The same rule params.yaml's eval.term_low/term_high must satisfy.
    problems = EvalParams(term_low=args.term_low, term_high=args.term_high).problems()
    if problems:
        key, message = problems[0]
        raise InputError("command line", message, field=f"--{key.replace('_', '-')}")
    out = Path(args.output)
    if any(out.resolve() == Path(p).resolve() for p in args.logs):
        raise InputError(out, "is also a LOG: writing it would replace the log being re-scored", field="-o")
    result = rescore(args.logs, args.term_low, args.term_high)
    files.write_json(out, result)
    print(summary_line(result, out))


if __name__ == "__main__":
    files.run_stage(main)
