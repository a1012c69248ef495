"""Rejection sampling, second half: keep the right answers of a round's samples.jsonl and weight them.

    python stages/filter.py round1    # normally: dvc repro filter@round1

Re-parses every sampled answer (a parser change reruns filter -> train -> eval, never sampling) and accepts it when
it is finished and `scoring.is_correct` holds within `filter.term_tolerance`. Per case: duplicates dropped
(`filter.dedup`), then each of its n accepted answers weighted 1/n (`filter.weighting`), so every case counts once.
Writes outputs/<round>/sft.jsonl, metrics/<round>/filter.json and plots/filter_accepted/<round>.csv;
docs/pipeline.md (filter) lists every field.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lawshift.core import files
from lawshift.core.files import InputError
from lawshift.core.params import FilterParams
from lawshift.task.answers import parse_answer
from lawshift.task.data import Case, case_from_record
from lawshift.task.scoring import is_correct


def normalize_whitespace(text: str) -> str:
    """Runs of whitespace become one space and the ends are stripped: `a  b\n` and `a b` are one answer."""
    return " ".join(text.split())


@dataclass(frozen=True)
class SampledCase:
    """One record of a round's samples.jsonl, as far as filtering needs it."""

    case_id: str
    case: Case
    prompt: str
    answers: tuple[str, ...]
    finished: tuple[bool, ...]  # per answer: ended by the model (eos), not cut at max_new_tokens
    first_draws: int = 0  # answers drawn before resampling (the rest are further draws); 0 = all of them


def read_sampled_case(rec: object, path: str | Path, index: int) -> SampledCase:
    """Validate one samples.jsonl record; a bad one is an InputError naming the record and field."""
    case = case_from_record(rec, path, index)
    for key in ("case_id", "prompt"):
        if not isinstance(rec.get(key), str):
            raise InputError(path, "missing" if key not in rec else "must be a string", index, key)
    answers = rec.get("answers")
    if not isinstance(answers, list):
        raise InputError(path, "missing" if "answers" not in rec else "must be a list", index, "answers")
    for j, a in enumerate(answers):
        if not isinstance(a, dict) or not isinstance(a.get("text"), str):
            raise InputError(path, "must be an object with a string 'text'", index, f"answers[{j}]")
        if not isinstance(a.get("finished"), bool):
            raise InputError(path, "missing" if "finished" not in a else "must be true or false", index,
                             f"answers[{j}].finished")
    first = rec.get("first_draws", len(answers))
    if not isinstance(first, int) or isinstance(first, bool) or not 0 <= first <= len(answers):
        raise InputError(path, f"must be an integer in [0, {len(answers)}]", index, "first_draws")
    return SampledCase(rec["case_id"], case, rec["prompt"], tuple(a["text"] for a in answers),
                       tuple(a["finished"] for a in answers), first)


@dataclass
class CaseOutcome:
    generated: int  # answers sampled
    format_errors: int  # answers parse_answer could not read
    truncated: int  # answers cut at the length limit: never accepted
    truncated_correct: int  # of those, the ones is_correct would have passed
    accepted: int  # finished answers that pass is_correct, duplicates included
    duplicates: int  # accepted answers dropped as repeats
    kept: int  # n: the distinct accepted answers, one sft.jsonl line each (earlier rounds' included)
    accepted_first: int = 0  # of `accepted`, those among the first draws (before resampling)
    kept_previous: int = 0  # of `kept`, answers an earlier round trained on (keep_previous)
    records: list[dict] = field(default_factory=list)  # those lines (dropped once written, see `run`)


def filter_case(sampled: SampledCase, fp: FilterParams, previous: Sequence[str] = ()) -> CaseOutcome:
    """Accept, deduplicate and weight the answers of one case (`fp`: the filter params, validated on load).
    `previous`: the case's answers an earlier round trained on (keep_previous); they come first and count in n."""
    parses = [parse_answer(text) for text in sampled.answers]
    correct = [is_correct(ans, sampled.case, fp.term_tolerance) for ans in parses]
    ok = [c and done for c, done in zip(correct, sampled.finished, strict=True)]
    accepted = [text for text, good in zip(sampled.answers, ok, strict=True) if good]
    truncated = [c for c, done in zip(correct, sampled.finished, strict=True) if not done]
    kept, seen = [], set()
    for text in [*previous, *accepted]:
        key = normalize_whitespace(text)
        if fp.dedup and key in seen:
            continue
        seen.add(key)
        kept.append(text)
    n = len(kept)
    weight = 1.0 / n if fp.weighting == "inverse_n" and n else 1.0
    base = {"case_id": sampled.case_id, **sampled.case.to_dict(), "prompt": sampled.prompt}
    records = [{**base, "response": text, "num_correct_for_this_sample": n, "weight": weight} for text in kept]
    first = sampled.first_draws or len(parses)
    return CaseOutcome(len(parses), sum(a is None for a in parses), len(truncated), sum(truncated), len(accepted),
                       len(previous) + len(accepted) - n, n, sum(ok[:first]), min(len(previous), n), records)


def summarise(outcomes: Iterable[CaseOutcome]) -> dict:
    """The reference statistics (accepted answers counted before deduplication, as the reference did), plus the
    answers actually written, duplicates dropped and format errors."""
    outcomes = list(outcomes)
    cases = len(outcomes)
    generated = sum(o.generated for o in outcomes)
    accepted = sum(o.accepted for o in outcomes)
    errors = sum(o.format_errors for o in outcomes)
    return {
        "total_samples": cases,
        "total_generated": generated,
        "total_accepted": accepted,
        "acceptance_rate": round(accepted / generated, 6) if generated else 0.0,
        "samples_with_no_correct": sum(o.accepted == 0 for o in outcomes),
        "avg_correct_per_sample": round(accepted / cases, 6) if cases else 0.0,
        "sft_examples": sum(o.kept for o in outcomes),  # lines of the round's sft.jsonl
        "duplicates_removed": sum(o.duplicates for o in outcomes),
        "format_errors": errors,
        "format_error_rate": round(errors / generated, 6) if generated else 0.0,
        "truncated": sum(o.truncated for o in outcomes),
        "truncated_correct": sum(o.truncated_correct for o in outcomes),
        # Share of cases with an accepted answer after the first draws and after resampling; `trained_coverage`
        # also counts answers kept from earlier rounds: the share of cases the round's training data holds.
        "coverage_first": round(sum(o.accepted_first > 0 for o in outcomes) / cases, 6) if cases else None,
        "coverage": round(sum(o.accepted > 0 for o in outcomes) / cases, 6) if cases else None,
        "trained_coverage": round(sum(o.kept > 0 for o in outcomes) / cases, 6) if cases else None,
        "kept_previous": sum(o.kept_previous for o in outcomes),
    }


def accepted_histogram(outcomes: Iterable[CaseOutcome]) -> list[dict]:
    """Rows `accepted, cases` for every count from 0 to the most answers any case had, zeros included."""
    outcomes = list(outcomes)
    top = max((o.generated for o in outcomes), default=0)
    counts = Counter(o.accepted for o in outcomes)
    return [{"accepted": k, "cases": counts.get(k, 0)} for k in range(top + 1)]


def previous_answers(path: str | Path | None) -> dict[str, list[str]]:
    """case id -> the responses of an earlier round's training data (a round's adapter keeps them: paths.TRAINED_ON),
    in file order; empty for None or a model that trained on nothing (the base)."""
    found: dict[str, list[str]] = {}
    if path is None or not Path(path).is_file():
        return found
    for index, (_, rec) in enumerate(files.read_jsonl(path)):
        if not isinstance(rec, dict) or not isinstance(rec.get("case_id"), str) or not isinstance(
                rec.get("response"), str):
            raise InputError(path, "needs a string case_id and response", index, "response")
        found.setdefault(rec["case_id"], []).append(rec["response"])
    return found


def run(samples: str | Path, sft: str | Path, fp: FilterParams,
        previous: str | Path | None = None) -> list[CaseOutcome]:
    """Filter every case of `samples` into `sft` (atomic), adding the answers of `previous` (an earlier round's
    training data) to their cases. Returns per-case outcomes, their records dropped."""
    outcomes = []
    prior = previous_answers(previous)
    seen: set[str] = set()
    with files.atomic_path(sft) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for index, (_, rec) in enumerate(files.read_jsonl(samples)):
            sampled = read_sampled_case(rec, samples, index)
            seen.add(sampled.case_id)
            outcome = filter_case(sampled, fp, prior.get(sampled.case_id, ()))
            out.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in outcome.records)
            outcome.records = []  # written; the counts are all the metrics need
            outcomes.append(outcome)
        if not outcomes:
            raise InputError(samples, "no sampled cases (empty file)")
        if stray := sorted(set(prior) - seen):
            raise InputError(previous, f"{len(stray)} case(s) not in {samples} (another training set?), e.g. "
                                       f"{stray[0]}", field="case_id")
        out.flush()
        os.fsync(out.fileno())
    return outcomes


def write_histogram(path: str | Path, rows: list[dict]) -> None:
    files.write_text(path, "accepted,cases\n" + "".join(f"{r['accepted']},{r['cases']}\n" for r in rows))
