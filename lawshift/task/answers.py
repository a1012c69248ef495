"""Read and write model answers.

A model answers with `<think>…</think><answer> 罪名 | 刑期 </answer>`, or `<answer> 不违规 </answer>` when the
facts are no crime. 刑期 is months as a plain integer, or `XT` for life imprisonment / death. The benchmark's own
short forms (`V | 7`, `V | XT`, `V`, `NV`) are read too, so the same parser serves generation, rejection sampling
and evaluation.

`parse_answer` is lenient about what small models actually emit (full-width pipe, a trailing 罪, `7个月`, `xt`,
`无期徒刑`, stray whitespace) and never raises: a malformed answer is None, not a crash mid-sampling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LIFE = 10000  # prison_time code for life imprisonment
DEATH = 10001  # prison_time code for the death penalty
XT = "XT"  # the answer-side term for both: the benchmark does not tell life from death
NO_VIOLATION = "不违规"

# Every opening or closing tag, case-insensitive. We pair tags in one linear pass instead of using
# `<answer>(.*?)</answer>` with findall, because that lazy pattern rescans to the end of the text from every
# unclosed `<answer>`: quadratic, ~5 s on 100k chars of repeated `<answer>`.
_TAG_RE = re.compile(r"<(/?)answer>", re.IGNORECASE)
# A term after whitespace removal: months with an optional 月/个月 unit, or a life/death word.
_MONTHS_RE = re.compile(r"(\d+)(?:个?月)?")
_XT_RE = re.compile(r"xt|无期徒刑|无期|死刑", re.IGNORECASE)
_SPACE_RE = re.compile(r"\s+")
_MAX_MONTHS = 10**6  # anything longer than this is garbage, not a sentence; also keeps int() away from huge strings
_NV_WORDS = {NO_VIOLATION, "NV"}
_PIPES = str.maketrans({"｜": "|", "丨": "|"})  # full-width bar and the CJK stroke models use as a pipe


@dataclass(frozen=True)
class Answer:
    verdict: str  # "V" (violation) or "NV" (no violation)
    charge: str | None  # normalised charge name (no trailing 罪, stripped), None when absent
    term: int | str | None  # months (int), "XT", or None


def normalize_charge(charge: str) -> str:
    """Strip all whitespace and drop one trailing 罪, so `盗窃罪` and ` 盗 窃 ` both compare equal to `盗窃`."""
    charge = _SPACE_RE.sub("", charge)
    return charge[:-1] if charge.endswith("罪") else charge


def gold_term(prison_time: int) -> int | str:
    """The answer-side term for a gold prison_time: life and death both become XT, anything else stays months."""
    return XT if prison_time in (LIFE, DEATH) else int(prison_time)


def format_answer(charge: str, prison_time: int) -> str:
    """The canonical answer block for a gold label; parse_answer reads it back as the gold Answer."""
    if normalize_charge(charge) == NO_VIOLATION:
        return f"<answer> {NO_VIOLATION} </answer>"
    # Only whitespace goes here; 罪 is left for parse_answer to drop. Dropping it on both sides would strip
    # twice, and normalize_charge (one trailing 罪, by design) is not idempotent.
    return f"<answer> {_SPACE_RE.sub('', charge)} | {gold_term(prison_time)} </answer>"


def _last_block(text: str) -> str | None:
    """Content of the last closed <answer> block, or None. An inner <answer> restarts the block, so a
    stray unclosed tag before the real answer does not swallow it."""
    start = None  # end offset of the most recent unclosed <answer>
    block = None
    for m in _TAG_RE.finditer(text):
        if not m.group(1):
            start = m.end()
        elif start is not None:
            block = text[start:m.start()]
            start = None
    return block


def _parse_term(text: str) -> int | str | None:
    text = _SPACE_RE.sub("", text)
    if _XT_RE.fullmatch(text):
        return XT
    m = _MONTHS_RE.fullmatch(text)
    if m is None:
        return None  # 三年, abc, -3, 7|8: not a term we can score, but the charge may still be good
    digits = m.group(1).lstrip("0") or "0"
    if len(digits) > len(str(_MAX_MONTHS)):
        return None  # decide by length first: int() of a 5000-digit string raises in Python >= 3.11
    months = int(digits)
    return months if months <= _MAX_MONTHS else None


def parse_answer(text: str) -> Answer | None:
    """Parse the last <answer> block of a completion; None when there is none or it is empty."""
    block = _last_block(text)
    if block is None:
        return None
    head, sep, tail = block.translate(_PIPES).partition("|")
    head = normalize_charge(head)
    term = _parse_term(tail) if sep else None
    if head.upper() in _NV_WORDS:
        return Answer("NV", None, None)  # a term after 不违规 means nothing
    if not head and term is None:
        return None  # empty block, or just a pipe and noise: no verdict to read
    # `V | 7` is the benchmark's short form: a violation with no charge named.
    charge = None if head.upper() == "V" or not head else head
    return Answer("V", charge, term)
