"""LawShift metrics: a pure function of the scored prediction records that eval writes.

    metrics = compute_metrics(records, k=3)   # per split, label type and folder: mean, pass@k, majority; train check

pass@k is the unbiased estimator (Chen et al.); the majority vote counts parsed answers, a tie going to the one
drawn first. docs/pipeline.md (eval) lists every figure.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

from lawshift.data import SPLITS

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


def _prompts(records: Iterable[dict], key: str = "success") -> dict[str, list[dict]]:
    """Each prompt's records whose field `key` applies (is not None), in draw order."""
    out: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(records, key=lambda r: r["sample"]):
        if r[key] is not None:
            out[r["id"]].append(r)
    return out


def _per_prompt(records: Iterable[dict], key: str) -> dict[str, float]:
    """Mean of a boolean field over each prompt's k answers (k sampled answers are averaged, as LawShift does).
    Records whose field is None (the check does not apply) are left out."""
    return {pid: sum(bool(r[key]) for r in rs) / len(rs) for pid, rs in _prompts(records, key).items()}


def success_rates(records: Iterable[dict], k: int) -> dict[str, float | None]:
    """Over prompts, each counting once: `mean` success of their draws, `pass_at_k` and `majority` vote success."""
    groups = _prompts(records).values()
    return {"mean": _rate(sum(bool(r["success"]) for r in rs) / len(rs) for rs in groups),
            "pass_at_k": _rate(pass_at_k(len(rs), sum(bool(r["success"]) for r in rs), min(k, len(rs)))
                               for rs in groups),
            "majority": _rate(majority_success(rs) for rs in groups)}


def _split_summary(records: list[dict], k: int) -> dict:
    rates = {s: success_rates((r for r in records if r["split"] == s), k) for s in SPLITS}
    original, poisoned = rates["original"]["mean"], rates["poisoned"]["mean"]
    gap = round(original - poisoned, 6) if original is not None and poisoned is not None else None
    return {"original": original, "poisoned": poisoned, "gap": gap,
            "pass_at_k": {s: rates[s]["pass_at_k"] for s in SPLITS},
            "majority": {s: rates[s]["majority"] for s in SPLITS},
            "format_valid": _rate(r["parse"] is not None for r in records), "truncated": _truncated(records)}


def _truncated(records: Iterable[dict]) -> float | None:
    """Share of answers cut at eval.max_new_tokens rather than ended by the model; None where the records do not
    say (a re-scored published log)."""
    return _rate(not r["finished"] for r in records if "finished" in r)


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
    bench = [r for r in records if r["split"] in SPLITS]
    labels = sorted({r["label"] for r in bench})
    by_label = {}
    for label in labels:
        rows = [r for r in bench if r["label"] == label]
        by_label[label] = {**_split_summary(rows, k), "n": len({r["id"] for r in rows if r["split"] == "original"})}
    folders = {}
    for name in sorted({r["folder"] for r in bench}):
        rows = [r for r in bench if r["folder"] == name]
        summary = _split_summary(rows, k)
        counts = {s: len({r["id"] for r in rows if r["split"] == s}) for s in SPLITS}
        folders[name] = {"label": rows[0]["label"], "original": summary["original"],
                         "poisoned": summary["poisoned"], "pass_at_k": summary["pass_at_k"],
                         "majority": summary["majority"], "n": counts["original"]}
        if counts["poisoned"] != counts["original"]:
            folders[name]["n_poisoned"] = counts["poisoned"]  # LawShift pairs them; say so when a folder does not
    original = [r for r in bench if r["split"] == "original"]
    train = success_rates((r for r in records if r["split"] == TRAIN), k)
    return {"k": k, "overall": _split_summary(bench, k), "by_label": by_label, "folders": folders,
            "charge_accuracy": _rate(_per_prompt(original, "charge_correct").values()),
            "term_exact_accuracy": _rate(_per_prompt(original, "term_exact").values()),
            "train_exact": train["mean"], "train_pass_at_k": train["pass_at_k"], "train_majority": train["majority"],
            "train_truncated": _truncated(r for r in records if r["split"] == TRAIN)}
