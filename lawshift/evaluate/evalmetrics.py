"""LawShift metrics: a pure function of the scored prediction records that eval writes.

    metrics = compute_metrics(records, k=3)   # per split, label type and folder: mean, pass@k, majority; train check
    builder = MetricsBuilder(3); builder.add(one_prompts_records); builder.result()   # the same, a prompt at a time

pass@k is the unbiased estimator (Chen et al.), also reported for every j = 1 … k (`pass_at`); the majority vote
counts parsed answers, a tie going to the one drawn first. docs/pipeline.md (eval) lists every figure.
"""

from __future__ import annotations

import math
from array import array
from collections import defaultdict
from collections.abc import Iterable, Sequence

from lawshift.task.data import SPLITS


def pct(x) -> str:
    """A rate for reports and tables: `12.3%`, or a dash where there is none."""
    return "–" if x is None else f"{100 * x:.1f}%"


TRAIN = "train"  # the split name of the train-set check's records


def _rate(values: Iterable[float]) -> float | None:
    values = list(values)
    return round(sum(values) / len(values), 6) if values else None


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimate from n draws of which c succeeded (Chen et al. 2021, Codex): the chance that k
    of the n draws, chosen without replacement, hold at least one success. k = n gives `c > 0`; k = 1 gives c / n."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_success(answers: Sequence[dict]) -> bool:
    """Majority vote over one prompt's records, in draw order: the most frequent parsed answer (verdict, charge,
    term), ties going to the one seen first, scored as its first record was. Unparsed answers do not vote; a prompt
    with none parsed fails. (A record's success depends on its parse alone, so any record of the answer would do.)"""
    votes: dict[tuple, list] = {}
    for r in answers:
        if r["parse"] is not None:
            key = (r["parse"]["verdict"], r["parse"]["charge"], r["parse"]["term"])
            votes.setdefault(key, [0, r])[0] += 1
    if not votes:
        return False
    _, first = max(votes.values(), key=lambda v: v[0])  # max keeps the first of equal counts: dicts are ordered
    return bool(first["success"])


def by_prompt(records: Iterable[dict]) -> list[list[dict]]:
    """Each prompt's records in draw order, the prompts in the order their first draws come."""
    out: dict[str, list[dict]] = {}
    for r in sorted(records, key=lambda r: r["sample"]):
        out.setdefault(r["id"], []).append(r)
    return list(out.values())


class _Rates:
    """Success over prompts, each counting once: the mean of its draws, pass@k and the majority vote. Kept as
    per-prompt floats in prompt order and summed at the end as a list would be: the same bytes as from the
    records, for 8 bytes a prompt."""

    def __init__(self):
        self.mean, self.passk, self.majority = array("d"), array("d"), 0
        self.curve: dict[int, array] = {}  # pass@j for every j = 1 .. k, per prompt

    def add(self, rs: Sequence[dict], k: int) -> None:
        c = sum(bool(r["success"]) for r in rs)
        self.mean.append(c / len(rs))
        self.passk.append(pass_at_k(len(rs), c, min(k, len(rs))))
        self.majority += majority_success(rs)
        for j in range(1, k + 1):
            self.curve.setdefault(j, array("d")).append(pass_at_k(len(rs), c, min(j, len(rs))))

    def result(self) -> dict[str, float | None]:
        n = len(self.mean)
        return {"mean": _rate(self.mean), "pass_at_k": _rate(self.passk),
                "majority": round(self.majority / n, 6) if n else None}

    def pass_curve(self) -> dict[str, float | None]:
        """pass@1, pass@2, … pass@k over the prompts (each prompt's estimate at min(j, its draws))."""
        return {str(j): _rate(values) for j, values in sorted(self.curve.items())}


class _Scope:
    """A split summary's share of the records (all LawShift prompts, a label type's or a folder's)."""

    def __init__(self, label: str | None = None):
        self.label, self.rates = label, {s: _Rates() for s in SPLITS}
        self.prompts = dict.fromkeys(SPLITS, 0)
        self.answers = self.valid = self.known = self.cut = 0

    def add(self, rs: Sequence[dict], k: int) -> None:
        split = rs[0]["split"]
        self.prompts[split] += 1
        if scored := [r for r in rs if r["success"] is not None]:
            self.rates[split].add(scored, k)
        self.answers += len(rs)
        self.valid += sum(r["parse"] is not None for r in rs)
        self.known += sum("finished" in r for r in rs)
        self.cut += sum(not r["finished"] for r in rs if "finished" in r)

    def summary(self) -> dict:
        rates = {s: self.rates[s].result() for s in SPLITS}
        original, poisoned = rates["original"]["mean"], rates["poisoned"]["mean"]
        gap = round(original - poisoned, 6) if original is not None and poisoned is not None else None
        return {"original": original, "poisoned": poisoned, "gap": gap,
                "pass_at_k": {s: rates[s]["pass_at_k"] for s in SPLITS},
                "majority": {s: rates[s]["majority"] for s in SPLITS},
                "format_valid": _share(self.valid, self.answers), "truncated": _share(self.cut, self.known)}


def _share(count: int, total: int) -> float | None:
    return round(count / total, 6) if total else None


def _per_prompt_mean(rs: Sequence[dict], key: str, into: array) -> None:
    """Append the mean of a boolean field over one prompt's records where it applies (is not None)."""
    if applies := [r[key] for r in rs if r[key] is not None]:
        into.append(sum(bool(v) for v in applies) / len(applies))


class MetricsBuilder:
    """`compute_metrics` one prompt at a time: `add` each prompt's records in prompt order, then `result()`.
    Keeps a few numbers per prompt, never the records (eval's memory stays flat in the number of answers)."""

    def __init__(self, k: int):
        self.k, self.overall = k, _Scope()
        self.labels: dict[str, _Scope] = {}
        self.folders: dict[str, _Scope] = {}
        self.charge, self.term, self.train = array("d"), array("d"), _Rates()
        self.train_known = self.train_cut = 0

    def add(self, rs: Sequence[dict]) -> None:
        """One prompt's records (all of its draws)."""
        rs = sorted(rs, key=lambda r: r["sample"])
        first = rs[0]
        if first["split"] == TRAIN:
            if scored := [r for r in rs if r["success"] is not None]:
                self.train.add(scored, self.k)
            self.train_known += sum("finished" in r for r in rs)
            self.train_cut += sum(not r["finished"] for r in rs if "finished" in r)
        elif first["split"] in SPLITS:
            for scope in (self.overall, self.labels.setdefault(first["label"], _Scope(first["label"])),
                          self.folders.setdefault(first["folder"], _Scope(first["label"]))):
                scope.add(rs, self.k)
            if first["split"] == "original":
                _per_prompt_mean(rs, "charge_correct", self.charge)
                _per_prompt_mean(rs, "term_exact", self.term)

    def result(self) -> dict:
        by_label = {label: {**self.labels[label].summary(), "n": self.labels[label].prompts["original"]}
                    for label in sorted(self.labels)}
        folders = {}
        for name in sorted(self.folders):
            scope = self.folders[name]
            summary, counts = scope.summary(), scope.prompts
            folders[name] = {"label": scope.label, "original": summary["original"], "poisoned": summary["poisoned"],
                             "pass_at_k": summary["pass_at_k"], "majority": summary["majority"],
                             "n": counts["original"]}
            if counts["poisoned"] != counts["original"]:
                folders[name]["n_poisoned"] = counts["poisoned"]  # LawShift pairs them; say so when a folder does not
        train = self.train.result()
        curve = {"train": self.train.pass_curve(), **{s: self.overall.rates[s].pass_curve() for s in SPLITS}}
        return {"k": self.k, "overall": self.overall.summary(), "by_label": by_label, "folders": folders,
                "pass_at": curve,  # pass@j for j = 1 .. k: the train check and both LawShift splits
                "charge_accuracy": _rate(self.charge), "term_exact_accuracy": _rate(self.term),
                "train_exact": train["mean"], "train_pass_at_k": train["pass_at_k"],
                "train_majority": train["majority"], "train_truncated": _share(self.train_cut, self.train_known)}


def answers_per_prompt(records: Iterable[dict]) -> int:
    """The fewest answers any prompt has (the k of pass@k); 0 without records."""
    counts = defaultdict(int)
    for r in records:
        counts[r["id"]] += 1
    return min(counts.values(), default=0)


def compute_metrics(records: Sequence[dict], k: int | None = None) -> dict:
    """The eval metrics from prediction records (see `score_answer`); fractions in [0, 1], case-weighted.

    Each prompt counts once: its k answers are averaged first (`original`, `poisoned`, `train_exact`: the mean
    success). Beside the mean, `pass_at_k` (the unbiased estimate that one of k draws succeeds) and `majority` (the
    majority-vote answer succeeds) per split, label type, folder and for the train-set check; `k` defaults to the
    fewest answers a prompt has, and with one answer per prompt all three agree. `format_valid` is the share of all
    LawShift answers that parse. A figure with no cases to measure is None. `truncated` is the share of answers that
    stopped at the length limit (scored as they stand, as LawShift scores them).
    """
    k = k or max(answers_per_prompt(records), 1)
    builder = MetricsBuilder(k)
    for rs in by_prompt(records):
        builder.add(rs)
    return builder.result()
