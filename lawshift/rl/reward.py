"""The verifier as a reward: what the filter stage accepts, scored per answer for GRPO.

`binary` is 1 exactly where lawshift/sample/filtering.py would accept the answer (finished, and
`scoring.is_correct` within `filter.term_tolerance`), else 0. `partial` gives credit in the spirit of LegalΔ: 0
for an unfinished, unreadable or wrong-verdict answer; for a case of no violation, 1 for `不违规`; otherwise
`grpo.charge_weight` for the right charge plus the rest times the term's credit, 1 within the tolerance and
decaying with the log distance in months, max(0, 1 - |ln(1+m) - ln(1+g)| / ln 2): nothing once (1 + months) is
off by a factor of 2. Life or death (XT) earns the term's credit only for XT. So partial is 1 exactly where
binary is (docs/method.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lawshift.task.answers import NO_VIOLATION, XT, Answer, gold_term, normalize_charge, parse_answer
from lawshift.task.scoring import is_correct


@dataclass(frozen=True)
class Gold:
    """What the verifier needs of a case (scoring.is_correct reads `charge` and `prison_time`)."""

    charge: str
    prison_time: int


def binary(answer: Answer | None, finished: bool, case, term_tolerance: int) -> float:
    return 1.0 if finished and is_correct(answer, case, term_tolerance) else 0.0


def term_credit(months: int, gold: int, term_tolerance: int) -> float:
    """1 within the tolerance, then decaying with the log distance: 0 at a factor of 2 in (1 + months)."""
    if abs(months - gold) <= term_tolerance:
        return 1.0
    return max(0.0, 1.0 - abs(math.log1p(months) - math.log1p(gold)) / math.log(2))


def partial(answer: Answer | None, finished: bool, case, term_tolerance: int, charge_weight: float) -> float:
    if not finished or answer is None:
        return 0.0
    gold_charge = normalize_charge(case.charge)
    if gold_charge == NO_VIOLATION:
        return 1.0 if answer.verdict == "NV" else 0.0
    if answer.verdict != "V" or answer.charge != gold_charge:
        return 0.0
    gold = gold_term(case.prison_time)
    if gold == XT or answer.term == XT or answer.term is None:
        term = 1.0 if gold == answer.term == XT else 0.0
    else:
        term = term_credit(answer.term, gold, term_tolerance)
    return charge_weight + (1.0 - charge_weight) * term


def score(kind: str, text: str, finished: bool, case, term_tolerance: int, charge_weight: float) -> float:
    """One answer's reward (`kind`: grpo.reward)."""
    answer = parse_answer(text)
    if kind == "binary":
        return binary(answer, finished, case, term_tolerance)
    return partial(answer, finished, case, term_tolerance, charge_weight)


def reward_function(kind: str, term_tolerance: int, charge_weight: float, eos_ids: Sequence[int],
                    seen: Callable[..., None] = lambda step, ids, rewards: None) -> Callable[..., list[float]]:
    """A TRL reward function: TRL passes each answer's text, token ids and the dataset's columns (`charge`,
    `prison_time`), one entry per answer, and its trainer state. An answer is finished when its last token is an
    eos (TRL cuts after the first). `seen(step, token_ids, rewards)` gets every batch: the budget's meter."""
    eos = set(eos_ids)

    def verifier(prompts, completions, completion_ids, charge, prison_time, trainer_state=None, **_) -> list[float]:
        rewards = [score(kind, text, bool(ids) and ids[-1] in eos, Gold(c, t), term_tolerance, charge_weight)
                   for text, ids, c, t in zip(completions, completion_ids, charge, prison_time, strict=True)]
        seen(trainer_state.global_step + 1 if trainer_state is not None else 0, completion_ids, rewards)
        return rewards

    verifier.__name__ = f"verifier_{kind}"
    return verifier
