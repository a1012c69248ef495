"""Tests for lawshift.task.answers: every answer form we read, the canonical writer, and a parser that never raises."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lawshift.task.answers import (
    DEATH,
    LIFE,
    NO_VIOLATION,
    XT,
    Answer,
    format_answer,
    gold_term,
    normalize_charge,
    parse_answer,
)

V, NV = "V", "NV"

PARSE_CASES = [
    # the project's own format
    ("<answer> 容留他人吸毒 | 7 </answer>", Answer(V, "容留他人吸毒", 7)),
    ("<think>先看事实</think><answer> 盗窃 | 36 </answer>", Answer(V, "盗窃", 36)),
    ("<answer>不违规</answer>", Answer(NV, None, None)),
    ("<answer> 不违规 </answer>", Answer(NV, None, None)),
    ("<answer> 不违规 | 7 </answer>", Answer(NV, None, None)),  # a term after 不违规 means nothing
    ("<answer> NV </answer>", Answer(NV, None, None)),
    ("<answer>nv</answer>", Answer(NV, None, None)),
    # the benchmark's short forms
    ("<answer> V | 7 </answer>", Answer(V, None, 7)),
    ("<answer>V|XT</answer>", Answer(V, None, XT)),
    ("<answer> V </answer>", Answer(V, None, None)),
    ("<answer>v | 12</answer>", Answer(V, None, 12)),
    # separators, suffixes, units
    ("<answer> 盗窃 ｜ 7 </answer>", Answer(V, "盗窃", 7)),
    ("<answer> 盗窃 丨 7 </answer>", Answer(V, "盗窃", 7)),
    ("<answer> 盗窃罪 | 7 </answer>", Answer(V, "盗窃", 7)),
    ("<answer> 盗窃罪 </answer>", Answer(V, "盗窃", None)),
    ("<answer> 盗窃 </answer>", Answer(V, "盗窃", None)),
    ("<answer> 盗窃 | 7个月 </answer>", Answer(V, "盗窃", 7)),
    ("<answer> 盗窃 | 7 个月 </answer>", Answer(V, "盗窃", 7)),
    ("<answer> 盗窃 | 7月 </answer>", Answer(V, "盗窃", 7)),
    ("<answer> 盗窃 | 0 </answer>", Answer(V, "盗窃", 0)),
    ("<answer> 盗窃 | 007 </answer>", Answer(V, "盗窃", 7)),
    ("<answer> 盗窃 | ７ </answer>", Answer(V, "盗窃", 7)),  # full-width digit
    ("<answer> 故意杀人 | xt </answer>", Answer(V, "故意杀人", XT)),
    ("<answer> 故意杀人 | XT </answer>", Answer(V, "故意杀人", XT)),
    ("<answer> 故意杀人 | 无期徒刑 </answer>", Answer(V, "故意杀人", XT)),
    ("<answer> 故意杀人 | 无期 </answer>", Answer(V, "故意杀人", XT)),
    ("<answer> 故意杀人 | 死刑 </answer>", Answer(V, "故意杀人", XT)),
    ("<answer> | 7 </answer>", Answer(V, None, 7)),
    # whitespace and newlines anywhere
    ("<answer>\n  容留 他人\n吸毒 罪 \n |\n 7 \n</answer>\n", Answer(V, "容留他人吸毒", 7)),
    ("\n\n  <answer>盗窃|7</answer>  \n", Answer(V, "盗窃", 7)),
    ("<answer>\u3000盗窃\u3000|\u30007\u3000</answer>", Answer(V, "盗窃", 7)),  # ideographic spaces
    ("<ANSWER> 盗窃 | 7 </Answer>", Answer(V, "盗窃", 7)),
    # terms we cannot score keep the charge
    ("<answer> 盗窃 | 三年 </answer>", Answer(V, "盗窃", None)),
    ("<answer> 盗窃 | abc </answer>", Answer(V, "盗窃", None)),
    ("<answer> 盗窃 | -3 </answer>", Answer(V, "盗窃", None)),
    ("<answer> 盗窃 | 7.5 </answer>", Answer(V, "盗窃", None)),
    ("<answer> 盗窃 | 7 | 8 </answer>", Answer(V, "盗窃", None)),
    ("<answer> 盗窃 | </answer>", Answer(V, "盗窃", None)),
    ("<answer> 盗窃 | 1000000 </answer>", Answer(V, "盗窃", 10**6)),
    ("<answer> 盗窃 | 1000001 </answer>", Answer(V, "盗窃", None)),
    ("<answer> 盗窃 | " + "9" * 5000 + " </answer>", Answer(V, "盗窃", None)),  # int() would raise here
    ("<answer> 盗窃 | " + "0" * 5000 + "7 </answer>", Answer(V, "盗窃", 7)),
    # several blocks: the last closed one counts
    ("<answer> 抢劫 | 36 </answer> 再想想 <answer> 盗窃 | 7 </answer>", Answer(V, "盗窃", 7)),
    ("<answer>不违规</answer><answer>盗窃|7</answer>", Answer(V, "盗窃", 7)),
    ("<answer>盗窃|7</answer><answer>不违规</answer>", Answer(NV, None, None)),
    ("<think>格式是 <answer> 抢劫 | 1 </answer> 这样</think><answer> 盗窃 | 7 </answer>", Answer(V, "盗窃", 7)),
    ("<answer>盗窃|7</answer> 还有 <answer> 抢劫 | 9", Answer(V, "盗窃", 7)),  # trailing block never closed
    ("<answer> 草稿 <answer> 盗窃 | 7 </answer>", Answer(V, "盗窃", 7)),  # unclosed tag does not swallow
    ("<answer>盗窃|7</answer> </answer>", Answer(V, "盗窃", 7)),  # stray close tag is ignored
    # nothing to read
    ("", None),
    ("盗窃 | 7", None),
    ("<answer> 盗窃 | 7", None),
    ("盗窃 | 7 </answer>", None),
    ("</answer> 盗窃 | 7 <answer>", None),
    ("<answer></answer>", None),
    ("<answer>  \n </answer>", None),
    ("<answer> | </answer>", None),
    ("<answer> ｜ abc </answer>", None),
    ("<answer> 盗窃 | 7 </answer> <answer> </answer>", None),  # the last block is empty
]


@pytest.mark.parametrize("text, expected", PARSE_CASES)
def test_parse_answer(text, expected):
    assert parse_answer(text) == expected


@pytest.mark.parametrize("charge, expected", [
    ("盗窃", "盗窃"),
    ("盗窃罪", "盗窃"),
    (" 盗 窃 罪 \n", "盗窃"),
    ("罪罪", "罪"),  # only one trailing 罪 goes
    ("危险驾驶罪", "危险驾驶"),
    ("罪", ""),
    ("", ""),
    ("不违规", "不违规"),
])
def test_normalize_charge(charge, expected):
    assert normalize_charge(charge) == expected


@pytest.mark.parametrize("prison_time, expected", [
    (0, 0), (7, 7), (9999, 9999), (LIFE, XT), (DEATH, XT), (10002, 10002),
])
def test_gold_term(prison_time, expected):
    assert gold_term(prison_time) == expected


@pytest.mark.parametrize("charge, prison_time, text", [
    ("容留他人吸毒", 7, "<answer> 容留他人吸毒 | 7 </answer>"),
    ("盗窃罪", 36, "<answer> 盗窃罪 | 36 </answer>"),  # parse_answer drops the 罪, once
    (" 容留 他人\n吸毒 ", 7, "<answer> 容留他人吸毒 | 7 </answer>"),
    ("故意杀人", LIFE, "<answer> 故意杀人 | XT </answer>"),
    ("故意杀人", DEATH, "<answer> 故意杀人 | XT </answer>"),
    ("盗窃", 0, "<answer> 盗窃 | 0 </answer>"),
    (NO_VIOLATION, 0, "<answer> 不违规 </answer>"),
    (NO_VIOLATION, 7, "<answer> 不违规 </answer>"),
    (" 不违规 ", 0, "<answer> 不违规 </answer>"),
])
def test_format_answer(charge, prison_time, text):
    assert format_answer(charge, prison_time) == text


@pytest.mark.parametrize("charge, prison_time, expected", [
    ("容留他人吸毒", 7, Answer(V, "容留他人吸毒", 7)),
    ("盗窃罪", 120, Answer(V, "盗窃", 120)),
    ("故意杀人", LIFE, Answer(V, "故意杀人", XT)),
    ("故意杀人", DEATH, Answer(V, "故意杀人", XT)),
    (NO_VIOLATION, 0, Answer(NV, None, None)),
])
def test_format_parse_round_trip(charge, prison_time, expected):
    text = format_answer(charge, prison_time)
    assert parse_answer(text) == expected
    assert parse_answer(f"<think>推理</think>{text}") == expected


CHARGE_CHARS = "盗窃抢劫故意杀人容留他人吸毒危险驾驶罪 \n"


@given(charge=st.text(alphabet=CHARGE_CHARS, min_size=1), prison_time=st.integers(0, DEATH))
def test_round_trip_property(charge, prison_time):
    # The parsed charge is normalize_charge(gold) exactly, even for 罪罪: that is what is_correct compares.
    got = parse_answer(format_answer(charge, prison_time))
    assert got == Answer(V, normalize_charge(charge) or None, gold_term(prison_time))


def _check_shape(result):
    assert result is None or isinstance(result, Answer)
    if result is not None:
        assert result.verdict in {V, NV}
        assert result.charge is None or (isinstance(result.charge, str) and result.charge)
        assert result.term is None or result.term == XT or (isinstance(result.term, int) and 0 <= result.term <= 10**6)
        if result.verdict == NV:
            assert result.charge is None and result.term is None


@given(st.text())
def test_never_raises_on_any_text(text):
    _check_shape(parse_answer(text))


FRAGMENTS = ["<answer>", "</answer>", "<ANSWER>", "</Answer>", "<think>", "</think>", "|", "｜", "XT", "xt", "7",
             "36", "99999999999", "-1", "罪", "\n", " ", "不违规", "NV", "V", "盗窃", "个月", "**", "`", "# ", "无期"]


@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=3), max_size=40))
def test_never_raises_on_tag_soup(parts):
    _check_shape(parse_answer("".join(parts)))


@settings(max_examples=20, deadline=None)
@given(st.text(min_size=1, max_size=50), st.sampled_from(["<answer>", "</answer>", "<answer>|", "｜", "9"]))
def test_never_raises_on_huge_text(filler, tag):
    text = (filler + tag) * (100_000 // (len(filler) + len(tag)) + 1)
    _check_shape(parse_answer(text))


@pytest.mark.parametrize("text", [
    "<answer>" * 12_500,  # 100k chars of unclosed tags: quadratic for a lazy `<answer>(.*?)</answer>` findall
    "<answer>x" * 11_000 + "</answer>",
    "<answer> 盗窃 | " + "9" * 100_000 + " </answer>",
    "|" * 100_000,
])
def test_huge_input_is_linear(text):
    start = time.perf_counter()
    _check_shape(parse_answer(text))
    assert time.perf_counter() - start < 1.0  # ~ms when linear; seconds when a regex backtracks


def test_huge_input_last_block_still_found():
    text = "噪声" * 50_000 + "<answer> 盗窃 | 7 </answer>"
    assert parse_answer(text) == Answer(V, "盗窃", 7)
