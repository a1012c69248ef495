"""LawShift evaluation: prompts for both splits, batched generation, per-answer scoring and the metrics.

Two questions are measured. Does the model decide the case correctly under the original statute (the
original split, prompted with `articles_original`)? Does it change its answer when the statute changes (the
poisoned split, prompted with `articles_poisoned`)? Success on both follows the benchmark's per-label rule
(`lawshift.scoring.lawshift_success`). A fixed, seeded subset of the training cases is scored with the
rejection-sampling criterion (`is_correct`) as well, to show whether the loop optimises what it trains for.

The flow is `build_items` / `train_items` -> `generate_records` (one scored record per answer, resumable) ->
`compute_metrics` (a pure function of the records). Stage `eval` (stages/eval.py) wires them together:

    python stages/eval.py base      # normally: dvc repro eval@base
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from lawshift.answers import NO_VIOLATION, Answer, gold_term, normalize_charge, parse_answer
from lawshift.data import SPLITS, ArticleLookup, Case, Folder, load_articles, training_cases
from lawshift.files import InputError, write_jsonl
from lawshift.generation import Backend, GenerationSettings
from lawshift.prompts import build_messages, render_prompt
from lawshift.scoring import is_correct, lawshift_success, term_error

log = logging.getLogger(__name__)

TRAIN = "train"  # the split name of the train-set check's records


@dataclass(frozen=True)
class EvalItem:
    """One prompt to answer: a LawShift case in one split, or a training case (split `train`)."""

    id: str  # `<folder>/<split>/<index>` or `train/<index>`: unique within one evaluation
    folder: str | None
    label: str | None  # the folder's LawShift label type; None for training cases
    split: str  # original | poisoned | train
    index: int  # position in its source file
    case: Case
    prompt: str


def check_params(e, params_file: str = "params.yaml") -> None:
    """Refuse eval settings that cannot run, naming the field, before any model is loaded."""
    rules = [("num_samples", e.num_samples >= 1, "must be >= 1"),
             ("batch_size", e.batch_size >= 1, "must be >= 1"),
             ("max_new_tokens", e.max_new_tokens >= 1, "must be >= 1"),
             ("temperature", e.temperature >= 0, "must be >= 0 (0 = greedy)"),
             ("top_p", 0 < e.top_p <= 1, "must be in (0, 1]"),
             ("train_subset", e.train_subset >= 0, "must be >= 0"),
             ("term_high", 0 <= e.term_low <= e.term_high, "needs 0 <= term_low <= term_high"),
             ("backend", e.backend == "hf", "only `hf` is available for eval")]
    for name, ok, why in rules:
        if not ok:
            raise InputError(params_file, f"{why}, got {getattr(e, name)!r}", field=f"eval.{name}")


def build_items(folders: Sequence[Folder], tokenizer, show_old_statute: bool = False,
                strict_articles: bool = False) -> tuple[list[EvalItem], int]:
    """Prompts for every case of both splits of each folder, each split with its own articles file; also the
    number of cited article ids the articles files lack (an error instead when `strict_articles`)."""
    items, missing = [], 0
    for folder in folders:
        lookups = {split: ArticleLookup(folder.articles(split), str(folder.path / f"articles_{split}.json"),
                                        strict_articles) for split in SPLITS}
        for split in SPLITS:
            source = folder.path / f"{split}.json"
            for i, case in enumerate(folder.cases(split)):
                articles = lookups[split].for_case(case, i, source)
                old = None
                if split == "poisoned" and show_old_statute:
                    old = lookups["original"].for_case(case, i, source)
                prompt = render_prompt(tokenizer, build_messages(case.fact, articles, old_articles=old))
                items.append(EvalItem(f"{folder.name}/{split}/{i}", folder.name, folder.label, split, i, case, prompt))
        missing += sum(lookup.missing for lookup in lookups.values())
    return items, missing


def train_subset_indices(num_cases: int, size: int, seed: int) -> list[int]:
    """A fixed, seeded choice of `size` training cases (all of them when there are fewer), in file order."""
    if size <= 0:
        return []
    return sorted(random.Random(seed).sample(range(num_cases), min(size, num_cases)))


def train_items(root: str | Path, articles_path: str | Path, size: int, seed: int, tokenizer,
                strict_articles: bool = False) -> tuple[list[EvalItem], int]:
    """Training-case prompts built as the sample stage builds them (data.train_articles), and the number of
    article ids missing from that file."""
    if size <= 0:
        return [], 0
    cases = training_cases(root)
    lookup = ArticleLookup(load_articles(articles_path), str(articles_path), strict_articles)
    source = Path(root) / "training_set.json"
    items = []
    for i in train_subset_indices(len(cases), size, seed):
        case = cases[i]
        prompt = render_prompt(tokenizer, build_messages(case.fact, lookup.for_case(case, i, source)))
        items.append(EvalItem(f"{TRAIN}/{i}", None, None, TRAIN, i, case, prompt))
    return items, lookup.missing


# ---------------------------------------------------------------------------------------------------------------
# Scoring one answer


def answer_dict(answer: Answer | None) -> dict | None:
    if answer is None:
        return None
    return {"verdict": answer.verdict, "charge": answer.charge, "term": answer.term}


def gold_checks(answer: Answer | None, case: Case) -> tuple[bool | None, bool | None]:
    """(charge right, term exactly right) against the gold labels; None where the label does not apply.

    A no-violation gold has a charge to match (acquittal) but no term; an empty gold charge has neither.
    """
    gold_charge = normalize_charge(case.charge)
    if not gold_charge:
        return None, None
    if gold_charge == NO_VIOLATION:
        return answer is not None and answer.verdict == "NV", None
    if answer is None or answer.verdict != "V":
        return False, False
    return answer.charge == gold_charge, answer.term == gold_term(case.prison_time)


def score_answer(item: EvalItem, text: str, sample: int, low: int, high: int) -> dict:
    """The prediction record for one answer: what was asked, what came back, how it parsed and scored.

    Gold-label checks (charge, exact term, term error) are made on the original split only: a poisoned
    record carries the original case's labels, which the changed statute no longer decides. There the
    label type's rule (`lawshift_success`) is the measure.
    """
    answer = parse_answer(text)
    if item.split == TRAIN:
        success = is_correct(answer, item.case)
    else:
        success = lawshift_success(answer, item.label, item.split, low, high)
    charge_ok, term_ok, err = None, None, None
    if item.split == "original":
        charge_ok, term_ok = gold_checks(answer, item.case)
        err = term_error(answer, item.case)
    return {"id": item.id, "folder": item.folder, "label": item.label, "split": item.split, "index": item.index,
            "sample": sample, "case_id": item.case.case_id,
            "gold": {"charge": item.case.charge, "prison_time": item.case.prison_time},
            "answer": text, "parse": answer_dict(answer), "success": success,
            "charge_correct": charge_ok, "term_exact": term_ok, "term_error": err}


# ---------------------------------------------------------------------------------------------------------------
# Metrics: a pure function of the prediction records


def _rate(values: Iterable[float]) -> float | None:
    values = list(values)
    return round(sum(values) / len(values), 6) if values else None


def _per_prompt(records: Iterable[dict], key: str) -> dict[str, float]:
    """Mean of a boolean field over each prompt's k answers (k sampled answers are averaged, as LawShift does).
    Records whose field is None (the check does not apply) are left out."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        if r[key] is not None:
            hits[r["id"]].append(bool(r[key]))
    return {pid: sum(v) / len(v) for pid, v in hits.items()}


def _split_summary(records: list[dict]) -> dict:
    by_split = {s: _per_prompt((r for r in records if r["split"] == s), "success") for s in SPLITS}
    original, poisoned = _rate(by_split["original"].values()), _rate(by_split["poisoned"].values())
    gap = round(original - poisoned, 6) if original is not None and poisoned is not None else None
    return {"original": original, "poisoned": poisoned, "gap": gap,
            "format_valid": _rate(r["parse"] is not None for r in records)}


def compute_metrics(records: Sequence[dict]) -> dict:
    """The eval metrics from prediction records (see `score_answer`); fractions in [0, 1], case-weighted.

    Each prompt counts once: its k answers are averaged first. `format_valid` is the share of all LawShift
    answers that parse. A figure with no cases to measure is None.
    """
    bench = [r for r in records if r["split"] in SPLITS]
    labels = sorted({r["label"] for r in bench})
    by_label = {}
    for label in labels:
        rows = [r for r in bench if r["label"] == label]
        by_label[label] = {**_split_summary(rows), "n": len({r["id"] for r in rows if r["split"] == "original"})}
    folders = {}
    for name in sorted({r["folder"] for r in bench}):
        rows = [r for r in bench if r["folder"] == name]
        summary = _split_summary(rows)
        counts = {s: len({r["id"] for r in rows if r["split"] == s}) for s in SPLITS}
        folders[name] = {"label": rows[0]["label"], "original": summary["original"],
                         "poisoned": summary["poisoned"], "n": counts["original"]}
        if counts["poisoned"] != counts["original"]:
            folders[name]["n_poisoned"] = counts["poisoned"]  # LawShift pairs them; say so when a folder does not
    original = [r for r in bench if r["split"] == "original"]
    train = [r for r in records if r["split"] == TRAIN]
    return {"overall": _split_summary(bench), "by_label": by_label, "folders": folders,
            "charge_accuracy": _rate(_per_prompt(original, "charge_correct").values()),
            "term_exact_accuracy": _rate(_per_prompt(original, "term_exact").values()),
            "train_exact": _rate(_per_prompt(train, "success").values())}


# ---------------------------------------------------------------------------------------------------------------
# Generation: batched, resumable


def fingerprint(parts: dict) -> str:
    """A hash of everything that decides the predictions; a partial file from other inputs is not reused."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class PartialLog:
    """Per-batch records appended to `<out>.partial` under a fingerprint header, so an interrupted run resumes.

    Line 1 is `{"fingerprint": …}`, then one line per finished batch. Only the last line can be torn by an
    interruption; it is dropped. A header from other inputs means the file is stale and it is started afresh.
    """

    def __init__(self, path: str | Path, fp: str):
        self.path, self.fp = Path(path), fp

    def load(self) -> dict[int, list[dict]]:
        if not self.path.is_file():
            return {}
        # Bytes split at b"\n" only: a kill can tear the last line inside a multi-byte character, and model text
        # may hold U+2028 and the like, which str.splitlines() would break a record at.
        lines = self.path.read_bytes().removesuffix(b"\n").split(b"\n")
        batches: dict[int, list[dict]] = {}
        for lineno, line in enumerate(lines, start=1):
            try:
                obj = json.loads(line)
            except ValueError:  # bad JSON or bad UTF-8
                if lineno == len(lines):
                    break  # torn by the interruption: that batch is generated again
                raise InputError(self.path, "corrupt line in a partial predictions file; delete it to start over",
                                 line=lineno) from None
            if lineno == 1:
                if not isinstance(obj, dict) or obj.get("fingerprint") != self.fp:
                    log.info("%s is from other inputs; starting afresh", self.path)
                    return {}
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("batch"), int) \
                    or not isinstance(obj.get("records"), list):
                raise InputError(self.path, "not a batch of records; delete the file to start over", line=lineno)
            batches[obj["batch"]] = obj["records"]
        return batches

    def start(self, done: dict[int, list[dict]]) -> None:
        """Rewrite the file with the header and the batches kept (drops a torn or stale tail)."""
        lines = [{"fingerprint": self.fp}] + [{"batch": b, "records": recs} for b, recs in sorted(done.items())]
        write_jsonl(self.path, lines)

    def append(self, batch: int, records: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"batch": batch, "records": records}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def batches(items: Sequence[EvalItem], lengths: Sequence[int], batch_size: int) -> list[list[EvalItem]]:
    """Longest prompts first: little padding per batch, and a memory failure shows in the first batch."""
    order = sorted(range(len(items)), key=lambda i: (-lengths[i], i))
    return [[items[i] for i in order[k:k + batch_size]] for k in range(0, len(order), batch_size)]


def generate_records(backend: Backend, groups: list[list[EvalItem]], settings: GenerationSettings, seed: int,
                     low: int, high: int, partial: PartialLog | None = None) -> Iterator[dict]:
    """Generate and score every batch, yielding records in batch order. Batch b is seeded with seed + b, so a
    resumed run draws the same samples as an uninterrupted one."""
    done = partial.load() if partial else {}
    if partial:
        partial.start(done)
    total = sum(len(g) for g in groups)
    resumed = sum(len(g) for b, g in enumerate(groups) if b in done)
    with tqdm(total=total, initial=resumed, desc="eval cases", unit="case") as bar:
        for b, group in enumerate(groups):
            if b not in done:
                results = backend.generate([it.prompt for it in group], settings, seed + b)
                recs = [score_answer(it, c.text, j, low, high) | {"finished": c.finished, "num_tokens": c.num_tokens}
                        for it, res in zip(group, results, strict=True) for j, c in enumerate(res.completions)]
                if partial:
                    partial.append(b, recs)
                done[b] = recs
                bar.update(len(group))
            yield from done[b]
