"""Re-score published LawShift evaluation logs with this project's answer parser and success protocol.

    python -m lawshift.evaluate.rescore LOG [LOG ...] -o FILE [--term-low 36] [--term-high 120]

A LOG is the JSON list the public LawShift scripts write (`detailed_results.json`): one `{"folder", "label_type",
"original", "poisoned"}` per folder, each split a list of records or an object with a `predictions` list; a record's
text (`full_response` or `response`) is a string or one string per sample. Answers go through the eval stage's
`score_answer` and `compute_metrics`, so FILE is laid out as `metrics/<model>/eval.json`. A text with no answer to
parse (some logs clip it) is scored from the record's `pred_verdict`/`pred_prison`, counted in `from_log_fields`.
`agreement`: how often our success matches `is_correct` on text-scored records; the public script's strict thresholds
(> 120, < 36) keep it under 100%, and under 90% stderr warns the figures are not the log's.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lawshift.core import files
from lawshift.core.files import InputError
from lawshift.core.params import EvalParams
from lawshift.evaluate.evalmetrics import compute_metrics, pct
from lawshift.evaluate.evaluation import EvalItem, score_answer
from lawshift.task.answers import NO_VIOLATION, gold_term, parse_answer
from lawshift.task.data import SPLITS, Case, folder_labels
from lawshift.task.scoring import LABEL_TYPES

RESPONSE_KEYS = ("full_response", "response")  # the public scripts write the first; other runners the second
# The log's own reading of an answer: the public script's versions that clip `response` name the verdict
# `pred_verdict`, later ones `pred_violation`; both write 未识别 where their regexes found no answer (no verdict).
VERDICT_KEYS = ("pred_verdict", "pred_violation")
UNREAD = "未识别"
# Below this, our success and the log's is_correct part on too many records for a protocol difference alone (the
# thresholds' edges, answer regexes): the texts scored are likely not what the log scored.
AGREEMENT_FLOOR = 0.9


@dataclass(frozen=True)
class Logged:
    """One record of a log: the prompt it answers and the answer text(s) the model gave."""

    item: EvalItem
    texts: tuple[str, ...]  # one per sample drawn for this case
    published: bool | None  # the log's own is_correct; None when it has none
    from_fields: tuple[str | None, ...]  # per sample: the answer built from pred_verdict/pred_prison, when scored so


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
                               "(lawshift/task/labels.json) or give label_type", index, "folder")
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


def per_sample(rec: dict, key: str, j: int, k: int, path: str, index: int, where: str) -> tuple[object, str]:
    """Sample j's value of a record's field, and its JSON path: a list holds one per sample, one value one sample."""
    value, field = rec.get(key), f"{where}.{key}"
    if isinstance(value, list):
        if len(value) != k:
            raise InputError(path, f"has {len(value)} value(s) for {k} sample(s)", index, field)
        return value[j], f"{field}[{j}]"
    if k > 1 and value is not None:
        raise InputError(path, f"one value for {k} samples: give a list, one per sample", index, field)
    return value, field


def logged_verdict(value: object, field: str, path: str, index: int) -> str | None:
    """The verdict (V or NV) of a log's verdict field; None where it has none (null, or the public script's 未识别)."""
    if value is None or value == UNREAD:
        return None
    verdict = value.strip().upper() if isinstance(value, str) else None
    if verdict in ("V", "NV"):
        return verdict
    raise InputError(path, f"must be 'V', 'NV', {UNREAD!r} or null, got {value!r}", index, field)


def logged_term(value: object, field: str, path: str, index: int) -> int | str | None:
    """A log's pred_prison as an answer's term: months, XT for life/death. A number is read as gold prison_time is
    (10000/10001 are life/death), since logs store those codes; other text as the answer grammar reads a term."""
    if value is None:
        return None
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,7}", value.strip()):
        value = int(value)  # ASCII digits, bounded: int() must not meet a 5000-digit string
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return gold_term(value)
    answer = parse_answer(f"<answer> V | {value} </answer>") if isinstance(value, str) else None
    if answer is None or answer.term is None:
        raise InputError(path, f"must be months (10000/10001: life/death), 'XT' or null, got {value!r}", index, field)
    return answer.term


def logged_answer(rec: dict, j: int, k: int, path: str, index: int, where: str) -> str | None:
    """Sample j's answer block as the log read it, in the project's grammar so `score_answer` parses it as it would
    the model's own; None where the log has no verdict for it."""
    key = next((key for key in VERDICT_KEYS if key in rec), None)
    if key is None:
        return None
    verdict = logged_verdict(*per_sample(rec, key, j, k, path, index, where), path, index)
    if verdict is None:
        return None
    if verdict == "NV":
        return f"<answer> {NO_VIOLATION} </answer>"  # a term beside an acquittal means nothing, as in the grammar
    term = logged_term(*per_sample(rec, "pred_prison", j, k, path, index, where), path, index)
    return "<answer> V </answer>" if term is None else f"<answer> V | {term} </answer>"


def fallback_answers(rec: dict, texts: tuple[str, ...], path: str, index: int, where: str) -> tuple[str | None, ...]:
    """Per sample, the log's own answer where the text has none to parse (a clipped response), else None. Fields are
    read only where needed: a log whose texts all parse is not held to them."""
    return tuple(None if parse_answer(text) is not None else logged_answer(rec, j, len(texts), path, index, where)
                 for j, text in enumerate(texts))


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
            entries.append(Logged(item, texts, published_verdict(rec, path, index, where),
                                  fallback_answers(rec, texts, path, index, where)))
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
    """The prediction records (as `score_answer` makes them, with `from_log_fields`) and, per record with an
    `is_correct` whose every answer came from its text, (split, published, ours). A record scored from the log's own
    fields agrees with its is_correct by construction, so it would only flatter the agreement. A record with k samples
    is ours-correct when all k succeed: the public script's `is_correct` is `correct_count == num_samples`."""
    records, pairs = [], []
    for e in entries:
        scored = [score_answer(e.item, logged or text, j, low, high) | {"from_log_fields": logged is not None}
                  for j, (text, logged) in enumerate(zip(e.texts, e.from_fields, strict=True))]
        records += scored
        if e.published is not None and not any(r["from_log_fields"] for r in scored):
            pairs.append((e.item.split, e.published, all(r["success"] for r in scored)))
    return records, pairs


def _share(pairs: Sequence[tuple[str, bool, bool]]) -> dict:
    agree = sum(published == ours for _, published, ours in pairs)
    return {"records": len(pairs), "agree": agree, "share": round(agree / len(pairs), 6) if pairs else None}


def agreement(pairs: Sequence[tuple[str, bool, bool]]) -> dict:
    """How often our success equals the log's is_correct: overall and per split."""
    return {**_share(pairs), **{s: _share([p for p in pairs if p[0] == s]) for s in SPLITS}}


def field_counts(records: Sequence[dict]) -> dict[str, int]:
    """Per split, how many answers were scored from the log's pred_verdict/pred_prison."""
    return {s: sum(r["from_log_fields"] for r in records if r["split"] == s) for s in SPLITS}


def with_field_counts(metrics: dict, records: Sequence[dict]) -> dict:
    """`from_log_fields` beside each group's success figures, so a figure resting on the log's reading shows it."""
    metrics["overall"]["from_log_fields"] = field_counts(records)
    for key, group in (("label", metrics["by_label"]), ("folder", metrics["folders"])):
        for name, figures in group.items():
            figures["from_log_fields"] = field_counts([r for r in records if r[key] == name])
    return metrics


def log_notes(folders: Sequence[LoggedFolder], agree: dict) -> list[str]:
    """The stderr lines: per log, how many answers were scored from its fields; a warning when agreement is low."""
    counts: dict[str, tuple[int, int]] = {}
    for f in folders:
        logged = [a is not None for e in f.entries for a in e.from_fields]
        n, total = counts.get(f.path, (0, 0))
        counts[f.path] = (n + sum(logged), total + len(logged))
    notes = [f"{path}: {n} of {total} responses held no answer to parse and were scored from the log's "
             "pred_verdict/pred_prison" for path, (n, total) in counts.items() if n]
    if agree["records"] and agree["share"] < AGREEMENT_FLOOR:
        notes.append(f"warning: our success matches the logs' is_correct on only {agree['agree']}/{agree['records']} "
                     f"= {pct(agree['share'])} of text-scored records (< {pct(AGREEMENT_FLOOR)}): the figures are "
                     "likely not what the logs measured (clipped texts? another answer format?)")
    return notes


def rescore_logs(paths: Sequence[str | Path], low: int, high: int) -> tuple[dict, list[str]]:
    """The metrics of the given logs under this project's protocol, with the agreement figure and provenance, and
    the lines for stderr."""
    folders = combine([read_log(p) for p in paths])
    records, pairs = score([e for f in folders for e in f.entries], low, high)
    agree = agreement(pairs)
    result = {**with_field_counts(compute_metrics(records), records), "agreement": agree,
              "rescored": {"logs": [str(p) for p in paths], "term_low": low, "term_high": high,
                           "answers": len(records)}}
    return result, log_notes(folders, agree)


def rescore(paths: Sequence[str | Path], low: int, high: int) -> dict:
    """The metrics alone (see `rescore_logs`)."""
    return rescore_logs(paths, low, high)[0]


def summary_line(result: dict, out: str | Path) -> str:
    o, a = result["overall"], result["agreement"]
    agree = (f"agreement with the logs' is_correct {a['agree']}/{a['records']} = {pct(a['share'])}" if a["records"]
             else "no text-scored record with an is_correct to compare")
    fields = sum(o["from_log_fields"].values())
    logged = f"; {fields} answer(s) scored from the logs' pred_verdict/pred_prison (from_log_fields)" if fields else ""
    return (f"rescored {len(result['folders'])} folder(s), {result['rescored']['answers']} answer(s): original "
            f"{pct(o['original'])}, poisoned {pct(o['poisoned'])}; {agree}{logged} -> {out}")


def main(argv: Sequence[str] | None = None) -> None:
    defaults = EvalParams()
    ap = argparse.ArgumentParser(prog="python -m lawshift.evaluate.rescore", description=__doc__.splitlines()[0])
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
    result, notes = rescore_logs(args.logs, args.term_low, args.term_high)
    files.write_json(out, result)
    for note in notes:
        print(note, file=sys.stderr)
    print(summary_line(result, out))


if __name__ == "__main__":
    files.run_stage(main)
