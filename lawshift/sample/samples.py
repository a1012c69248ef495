"""Sample records: a case record and its further draws, the running tallies, and the resumable sample journal.

    partial = PartialFile(path, settings, {index: case_id}, Tally())   # continues a journal a kill left behind
    partial.append([case_record(i, case, prompt, result)])            # flushed and fsynced before it returns
    tally = partial.finalize(out, order)                               # samples.jsonl, every case once, in order

The record format and the journal's rules are in docs/pipeline.md (sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lawshift.core.files import InputError
from lawshift.core.journal import Journal, Span
from lawshift.engines.generation import PromptResult
from lawshift.task.answers import Answer, parse_answer
from lawshift.task.data import Case
from lawshift.task.scoring import is_correct

# --- records and counters ----------------------------------------------------------------------------------------

def parse_dict(text: str) -> dict | None:
    answer = parse_answer(text)  # the dict by hand: dataclasses.asdict deep-copies, a third of the driver's time
    return None if answer is None else {"verdict": answer.verdict, "charge": answer.charge, "term": answer.term}


def answer_dicts(result: PromptResult) -> list[dict]:
    return [{"text": c.text, "num_tokens": c.num_tokens, "finished": c.finished, "parse": parse_dict(c.text)}
            for c in result.completions]


def case_record(index: int, case: Case, prompt: str, result: PromptResult) -> dict:
    answers = answer_dicts(result)
    return {"index": index, "case_id": case.case_id, **case.to_dict(), "prompt": prompt,
            "prompt_tokens": result.prompt_tokens, "generated_tokens": sum(a["num_tokens"] for a in answers),
            "first_draws": len(answers), "answers": answers}


def extra_record(index: int, case: Case, first: int, result: PromptResult) -> dict:
    """A journal line of further draws for a case already recorded: its answers `first`, `first` + 1, ..."""
    answers = answer_dicts(result)
    return {"index": index, "case_id": case.case_id, "first": first,
            "generated_tokens": sum(a["num_tokens"] for a in answers), "answers": answers}


def merge_extras(rec: dict, extras: Sequence[dict]) -> dict:
    """A case record with its further draws appended, in draw order: the record samples.jsonl keeps."""
    out = dict(rec)
    for ext in sorted(extras, key=lambda e: e["first"]):
        out["answers"] = out["answers"] + ext["answers"]
        out["generated_tokens"] += ext["generated_tokens"]
    return out


def gold_case(rec: dict, path: str | Path = "", line: int | None = None) -> Case:
    try:
        return Case(rec["fact"], tuple(rec["relevant_articles"]), rec["charge"], rec["prison_time"])
    except (KeyError, TypeError) as err:
        raise InputError(path, f"malformed case record ({err!r}); delete the file to start afresh",
                         line=line) from None


def accepted_flags(rec: dict, gold: Case, path: str | Path = "", line: int | None = None) -> list[bool]:
    """Per answer of a record (a case's, or further draws of it): finished and right under the exact rule (term
    tolerance 0). Decides resampling and the coverage figures; the filter stage makes the final call under its own
    `filter.*` rule."""
    try:
        return [bool(a["finished"]) and is_correct(None if a["parse"] is None else Answer(**a["parse"]), gold, 0)
                for a in rec["answers"]]
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(path, f"malformed case record ({err!r}); delete the file to start afresh",
                         line=line) from None


@dataclass
class Tally:
    """Running totals over case records. `correct` uses the exact rule (tolerance 0): a preview, filter decides.
    `covered_first` / `covered`: cases with an accepted answer (finished and exactly right) among their first
    num_samples draws / among all their draws; `resampled`: cases that drew more, `extra_answers` how many more."""

    cases: int = 0
    answers: int = 0
    correct: int = 0
    format_errors: int = 0
    unfinished: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    covered_first: int = 0
    covered: int = 0
    resampled: int = 0
    extra_answers: int = 0

    def add(self, rec: dict, path: str | Path = "", line: int | None = None) -> None:
        try:
            parses = [None if a["parse"] is None else Answer(**a["parse"]) for a in rec["answers"]]
            finished = [bool(a["finished"]) for a in rec["answers"]]
            prompt_tokens, generated_tokens = int(rec["prompt_tokens"]), int(rec["generated_tokens"])
            first = int(rec.get("first_draws", len(parses)))
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(path, f"malformed case record ({err!r}); delete the file to start afresh",
                             line=line) from None
        gold = gold_case(rec, path, line)
        correct = [is_correct(a, gold, term_tolerance=0) for a in parses]
        ok = [c and f for c, f in zip(correct, finished, strict=True)]  # what accepted_flags gives
        self.cases += 1
        self.answers += len(parses)
        self.format_errors += sum(a is None for a in parses)
        self.unfinished += sum(not f for f in finished)
        self.correct += sum(correct)
        self.prompt_tokens += prompt_tokens
        self.generated_tokens += generated_tokens
        self.covered_first += any(ok[:first])
        self.covered += any(ok)
        self.resampled += len(parses) > first
        self.extra_answers += len(parses) - first


# --- the resumable partial file ----------------------------------------------------------------------------------

class PartialFile:
    """The sample journal: which cases are done (and where their lines are), their further draws, and per case
    the answers drawn and accepted so far (what resampling decides on)."""

    def __init__(self, path: Path, settings: dict, case_ids: dict[int, str], tally: Tally):
        self.path, self.case_ids, self.tally = path, case_ids, tally
        self.done: dict[int, Span] = {}  # case index -> its record's line in the journal
        self.extras: dict[int, list[Span]] = {}  # case index -> the lines of its further draws
        self.drawn: dict[int, int] = {}
        self.accepted: dict[int, int] = {}
        self.gold: dict[int, Case] = {}
        self.journal = Journal(path, settings, who="sample")
        self.journal.open(self._resume)
        self.resumed = len(self.done)

    def _resume(self, lineno: int, rec: dict, span: Span) -> None:
        index = rec.get("index")
        if index not in self.case_ids or rec.get("case_id") != self.case_ids[index]:
            raise InputError(self.path, "record for a case this run does not sample; delete the file to start "
                                        "afresh", line=lineno, field="case_id")
        if "first" in rec:
            if index not in self.done or rec["first"] != self.drawn[index]:
                raise InputError(self.path, f"further draws of case {index} out of order; delete the file to start "
                                            "afresh", line=lineno, field="first")
            self._count(rec, lineno)
            self.extras.setdefault(index, []).append(span)
            return
        if index in self.done:
            raise InputError(self.path, f"case {index} recorded twice; delete the file to start afresh", line=lineno)
        self.tally.add(rec, self.path, lineno)
        self._count(rec, lineno)
        self.done[index] = span

    def _count(self, rec: dict, lineno: int | None = None) -> None:
        index = rec["index"]
        if "first" not in rec:
            self.gold[index] = gold_case(rec, self.path, lineno)
        self.drawn[index] = self.drawn.get(index, 0) + len(rec["answers"])
        self.accepted[index] = self.accepted.get(index, 0) + sum(
            accepted_flags(rec, self.gold[index], self.path, lineno))

    def append(self, records: list[dict]) -> None:
        """One write per batch, then flush and fsync: once this returns the batch survives a kill or power loss."""
        for rec, span in zip(records, self.journal.append(records), strict=True):
            self._count(rec)
            if "first" in rec:
                self.extras.setdefault(rec["index"], []).append(span)
            else:
                self.done[rec["index"]] = span

    def close(self) -> None:
        self.journal.close()

    def finalize(self, out: Path, order: Sequence[int], keep_header: bool = False) -> Tally:
        """Write the records in `order`, each with its further draws merged in, to `out` atomically, the header line
        first only if `keep_header` (a shard's file: the merge checks it); remove the partial file."""
        tally = Tally()

        def merged(read):
            for i in order:
                rec = merge_extras(read(self.done[i]), [read(s) for s in self.extras.get(i, [])])
                tally.add(rec, self.path)
                yield rec

        self.journal.write_to(out, merged, keep_header)
        self.journal.remove()
        return tally


def tally_metrics(t: Tally) -> dict:
    """The counts of a set of case records (a run's, or the shards' merged)."""
    share = (lambda k: round(k / t.cases, 6)) if t.cases else (lambda k: None)
    return {"cases": t.cases, "answers_generated": t.answers, "generated_tokens": t.generated_tokens,
            "prompt_tokens": t.prompt_tokens, "correct_exact": t.correct, "format_errors": t.format_errors,
            "unfinished_answers": t.unfinished, "coverage_first": share(t.covered_first), "coverage": share(t.covered),
            "cases_resampled": t.resampled, "extra_answers": t.extra_answers}
