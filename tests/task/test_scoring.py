"""Tests for lawshift.task.scoring: the rejection-sampling criterion and the LawShift success table."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lawshift.task.answers import DEATH, LIFE, NO_VIOLATION, XT, Answer, format_answer, normalize_charge, parse_answer
from lawshift.task.scoring import LABEL_TYPES, is_correct, lawshift_success, term_error

V, NV = "V", "NV"


@dataclass(frozen=True)
class Gold:
    charge: str
    prison_time: int


THEFT_7 = Gold("盗窃", 7)
MURDER_LIFE = Gold("故意杀人", LIFE)
MURDER_DEATH = Gold("故意杀人", DEATH)
INNOCENT = Gold(NO_VIOLATION, 0)

IS_CORRECT_CASES = [
    # (answer, gold, tolerance, expected)
    (None, THEFT_7, 0, False),
    (None, INNOCENT, 0, False),
    (Answer(V, "盗窃", 7), THEFT_7, 0, True),
    (Answer(V, "盗窃", 8), THEFT_7, 0, False),
    (Answer(V, "盗窃", 6), THEFT_7, 0, False),
    (Answer(V, "盗窃", 8), THEFT_7, 1, True),
    (Answer(V, "盗窃", 6), THEFT_7, 1, True),
    (Answer(V, "盗窃", 9), THEFT_7, 1, False),
    (Answer(V, "盗窃", 12), THEFT_7, 5, True),
    (Answer(V, "盗窃", 13), THEFT_7, 5, False),
    (Answer(V, "盗窃", None), THEFT_7, 0, False),
    (Answer(V, "盗窃", None), THEFT_7, 100, False),
    (Answer(V, "盗窃", XT), THEFT_7, 0, False),
    (Answer(V, "盗窃", XT), THEFT_7, 100, False),
    (Answer(V, "抢劫", 7), THEFT_7, 0, False),
    (Answer(V, None, 7), THEFT_7, 0, False),  # the short form names no charge
    (Answer(NV, None, None), THEFT_7, 0, False),
    (Answer(V, "盗窃", 7), Gold(" 盗窃罪 ", 7), 0, True),  # so is the gold charge
    # life and death both match XT: the reference implementation's bug never accepted these
    (Answer(V, "故意杀人", XT), MURDER_LIFE, 0, True),
    (Answer(V, "故意杀人", XT), MURDER_DEATH, 0, True),
    (Answer(V, "故意杀人", LIFE), MURDER_LIFE, 0, False),  # the raw code is not an answer-side term
    (Answer(V, "故意杀人", 9999), MURDER_LIFE, 5, False),
    (Answer(V, "故意杀人", None), MURDER_DEATH, 0, False),
    (Answer(V, "抢劫", XT), MURDER_LIFE, 0, False),
    # no-violation gold: only the verdict matters
    (Answer(NV, None, None), INNOCENT, 0, True),
    (Answer(NV, None, None), Gold(NO_VIOLATION, 36), 0, True),
    (Answer(V, "盗窃", 0), INNOCENT, 0, False),
    (Answer(V, NO_VIOLATION, 0), INNOCENT, 0, False),
    (Answer(V, None, None), INNOCENT, 0, False),
]


@pytest.mark.parametrize("answer, gold, tolerance, expected", IS_CORRECT_CASES)
def test_is_correct(answer, gold, tolerance, expected):
    assert is_correct(answer, gold, term_tolerance=tolerance) is expected


@pytest.mark.parametrize("text, gold, expected", [
    ("<answer> 罪罪 | 7 </answer>", Gold("罪罪", 7), True),  # one 罪 dropped on each side, not two
    ("<answer> 盗窃罪罪 | 7 </answer>", THEFT_7, False),
    ("<think>…</think><answer> 故意杀人罪 | 无期徒刑 </answer>", MURDER_LIFE, True),
    ("<answer> 故意杀人 ｜ xt </answer>", MURDER_DEATH, True),
    ("<answer> 盗窃罪 | 7个月 </answer>", THEFT_7, True),
    ("<answer> 不违规 </answer>", INNOCENT, True),
    ("<answer> V | 7 </answer>", THEFT_7, False),
    ("盗窃 | 7", THEFT_7, False),
])
def test_is_correct_on_parsed_text(text, gold, expected):
    assert is_correct(parse_answer(text), gold, 0) is expected


@given(
    charge=st.text(alphabet="盗窃抢劫故意杀人罪 ", min_size=1).filter(normalize_charge) | st.just(NO_VIOLATION),
    prison_time=st.integers(0, DEATH) | st.sampled_from([LIFE, DEATH]),
)
def test_gold_answer_is_always_correct(charge, prison_time):
    # The SFT target written for a case must pass the rejection-sampling check for that same case.
    assert is_correct(parse_answer(format_answer(charge, prison_time)), Gold(charge, prison_time), term_tolerance=0)


def test_is_correct_accepts_any_case_object():
    from types import SimpleNamespace
    assert is_correct(Answer(V, "盗窃", 7), SimpleNamespace(charge="盗窃罪", prison_time=7), 0)


def test_thresholds_and_tolerance_have_no_defaults():
    # the callers pass filter.term_tolerance and eval.term_low/term_high; a forgotten one must not silently be 0/36/120
    # (a negative tolerance cannot reach is_correct: filter.term_tolerance fails at load, see test_params)
    with pytest.raises(TypeError):
        is_correct(Answer(V, "盗窃", 7), THEFT_7)
    with pytest.raises(TypeError):
        lawshift_success(Answer(V, "盗窃", 7), "V", "original")
    with pytest.raises(TypeError):
        lawshift_success(Answer(V, "盗窃", 7), "V", "original", 36)


# answers that probe every branch of the table, named for readability
NONE = None
A_NV = Answer(NV, None, None)
A_V = Answer(V, "盗窃", None)  # a conviction with no usable term
A_0, A_35, A_36, A_37 = (Answer(V, "盗窃", t) for t in (0, 35, 36, 37))
A_119, A_120, A_121 = (Answer(V, "盗窃", t) for t in (119, 120, 121))
A_XT = Answer(V, "盗窃", XT)
A_NV_ODD = Answer(NV, None, 60)  # NV with an in-band term must not pass the term labels

ANSWERS = [NONE, A_NV, A_V, A_0, A_35, A_36, A_37, A_119, A_120, A_121, A_XT, A_NV_ODD]
COLUMNS = "NONE A_NV A_V A_0 A_35 A_36 A_37 A_119 A_120 A_121 A_XT A_NV_ODD".split()

# Expected success per (label, split), one flag per answer in ANSWERS order:
#                      NONE NV  V    0   35   36   37  119  120  121   XT  NV60
SUCCESS_TABLE = {
    ("V", "original"):  "0   0   1    1    1    1    1    1    1    1    1    0",
    ("V", "poisoned"):  "0   0   1    1    1    1    1    1    1    1    1    0",
    ("NV", "original"): "0   0   1    1    1    1    1    1    1    1    1    0",
    ("NV", "poisoned"): "0   1   0    0    0    0    0    0    0    0    0    1",
    ("TU", "original"): "0   0   0    0    0    1    1    1    1    0    0    0",
    ("TU", "poisoned"): "0   0   0    0    0    0    0    0    1    1    0    0",
    ("TD", "original"): "0   0   0    0    0    1    1    1    1    0    0    0",
    ("TD", "poisoned"): "0   0   0    1    1    1    0    0    0    0    0    0",
    ("XT", "original"): "0   0   0    0    0    1    1    1    1    0    0    0",
    ("XT", "poisoned"): "0   0   0    0    0    0    0    0    0    0    1    0",
    ("NX", "original"): "0   0   0    0    0    0    0    0    0    0    1    0",
    ("NX", "poisoned"): "0   0   0    0    0    1    1    1    1    1    0    0",
}

SUCCESS_CASES = [
    pytest.param(answer, label, split, flags.split()[i] == "1", id=f"{label}-{split}-{COLUMNS[i]}")
    for (label, split), flags in SUCCESS_TABLE.items()
    for i, answer in enumerate(ANSWERS)
]


def test_success_table_is_complete():
    assert set(SUCCESS_TABLE) == {(label, split) for label in LABEL_TYPES for split in ("original", "poisoned")}
    assert all(len(flags.split()) == len(ANSWERS) for flags in SUCCESS_TABLE.values())


@pytest.mark.parametrize("answer, label, split, expected", SUCCESS_CASES)
def test_lawshift_success(answer, label, split, expected):
    # the protocol's thresholds: 3 and 10 years (eval.term_low / eval.term_high)
    assert lawshift_success(answer, label, split, 36, 120) is expected
    assert lawshift_success(answer, label, split, low=36, high=120) is expected


@pytest.mark.parametrize("answer, label, split, expected", [
    # a custom band [10, 20] moves every boundary
    (Answer(V, "x", 10), "TU", "original", True),
    (Answer(V, "x", 9), "TU", "original", False),
    (Answer(V, "x", 20), "TD", "original", True),
    (Answer(V, "x", 21), "TD", "original", False),
    (Answer(V, "x", 36), "XT", "original", False),  # in the default band, not in [10, 20]
    (Answer(V, "x", 20), "TU", "poisoned", True),
    (Answer(V, "x", 19), "TU", "poisoned", False),
    (Answer(V, "x", 10), "TD", "poisoned", True),
    (Answer(V, "x", 11), "TD", "poisoned", False),
    (Answer(V, "x", 10), "NX", "poisoned", True),
    (Answer(V, "x", 9), "NX", "poisoned", False),
    (Answer(V, "x", XT), "TU", "poisoned", False),
])
def test_lawshift_success_custom_band(answer, label, split, expected):
    assert lawshift_success(answer, label, split, low=10, high=20) is expected


@pytest.mark.parametrize("label, split", [("T1", "original"), ("v", "original"), ("", "poisoned"),
                                          ("V", "train"), ("NV", "Original"), ("XT", "")])
def test_lawshift_success_rejects_unknown(label, split):
    with pytest.raises(ValueError):
        lawshift_success(Answer(V, "x", 7), label, split, 36, 120)
    with pytest.raises(ValueError):  # validated even when the answer is unparseable
        lawshift_success(None, label, split, 36, 120)


@pytest.mark.parametrize("answer, gold, expected", [
    (Answer(V, "盗窃", 10), THEFT_7, 3),
    (Answer(V, "盗窃", 4), THEFT_7, -3),
    (Answer(V, "盗窃", 7), THEFT_7, 0),
    (Answer(V, "抢劫", 10), THEFT_7, 3),  # charge does not matter for the term error
    (Answer(V, None, 0), Gold("盗窃", 120), -120),
    (Answer(V, "盗窃", XT), THEFT_7, None),
    (Answer(V, "故意杀人", 240), MURDER_LIFE, None),
    (Answer(V, "故意杀人", XT), MURDER_DEATH, None),
    (Answer(V, "盗窃", None), THEFT_7, None),
    (Answer(NV, None, None), THEFT_7, None),
    (Answer(V, "盗窃", 7), INNOCENT, None),
    (None, THEFT_7, None),
])
def test_term_error(answer, gold, expected):
    assert term_error(answer, gold) == expected
