"""Score parsed answers: the rejection-sampling criterion and the LawShift success protocol.

`is_correct` decides whether a sampled completion is kept for fine-tuning (right verdict, charge and term).
`lawshift_success` is the benchmark's per-label rule: each change type (label) says how the verdict or term
should move between the original and the poisoned version of a case, and success is judged on that movement,
not on the exact gold label.
"""

from __future__ import annotations

from lawshift.task.answers import NO_VIOLATION, XT, Answer, gold_term, normalize_charge

LABEL_TYPES = ("V", "NV", "TU", "TD", "XT", "NX")
SPLITS = ("original", "poisoned")


def _months(answer: Answer) -> int | None:
    """The term as months when it is a fixed term; XT and None are not numbers and fail any comparison."""
    term = answer.term
    return term if isinstance(term, int) and not isinstance(term, bool) else None


def is_correct(answer: Answer | None, case, term_tolerance: int) -> bool:
    """Does the answer match the gold case, its term within `term_tolerance` months (filter.term_tolerance; 0 is
    the exact rule)? `case` needs `charge: str` and `prison_time: int`."""
    if answer is None:
        return False
    gold_charge = normalize_charge(case.charge)
    if gold_charge == NO_VIOLATION:
        return answer.verdict == "NV"
    # Answer.charge is already normalised by parse_answer; normalising it again would strip a second 罪.
    if answer.verdict != "V" or answer.charge != gold_charge:
        return False
    gold = gold_term(case.prison_time)
    if gold == XT:
        # Life (10000) and death (10001) both read as XT. The reference compared "XT" with the raw 10000,
        # so it never accepted a life or death sample; that is the bug this line exists to avoid.
        return answer.term == XT
    months = _months(answer)
    return months is not None and abs(months - gold) <= term_tolerance


def lawshift_success(answer: Answer | None, label_type: str, split: str, low: int, high: int) -> bool:
    """LawShift success for one answer on a case of change type `label_type` from the `split` file; `low` and
    `high` are the protocol's term thresholds in months (eval.term_low / eval.term_high).

    On the original split the law is unchanged, so V/NV just need a conviction and the term labels need an
    ordinary term in [low, high] (NX: a life/death term). On the poisoned split the changed law should move
    the prediction: NV to acquittal, TU up to >= high, TD down to <= low, XT to life/death, NX off life/death
    to a fixed term >= low.
    """
    if label_type not in LABEL_TYPES:
        raise ValueError(f"unknown label type {label_type!r}, expected one of {LABEL_TYPES}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}, expected one of {SPLITS}")
    if answer is None:
        return False  # unparseable output is a failure, never skipped: skipping would flatter the model
    if split == "poisoned" and label_type == "NV":
        return answer.verdict == "NV"
    if answer.verdict != "V":
        return False
    months = _months(answer)
    in_band = months is not None and low <= months <= high
    if split == "original":
        match label_type:
            case "V" | "NV":
                return True
            case "TU" | "TD" | "XT":
                return in_band
            case "NX":
                return answer.term == XT
    match label_type:
        case "V":
            return True
        case "TU":
            return months is not None and months >= high
        case "TD":
            return months is not None and months <= low
        case "XT":
            return answer.term == XT
        case "NX":
            return months is not None and months >= low
    raise AssertionError("unreachable: label_type was validated above")


def term_error(answer: Answer | None, case) -> int | None:
    """Predicted minus gold months, for a V answer on a fixed-term gold case; None otherwise (XT, NV, no term)."""
    if answer is None or answer.verdict != "V" or normalize_charge(case.charge) == NO_VIOLATION:
        return None
    gold = gold_term(case.prison_time)
    months = _months(answer)
    if months is None or gold == XT:
        return None
    return months - gold
