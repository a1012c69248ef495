"""The GRPO arm's reward is the filter's verifier: binary equals the filter's decision on every answer (a table of
hand-made answers, and every answer the sample stage draws on the tiny model); partial is 1 exactly where binary is
and decays with the term's log distance."""

from __future__ import annotations

import json
import math

import pytest
from conftest import R1, run_stage

from lawshift.core.params import FilterParams
from lawshift.rl import reward
from lawshift.sample.filtering import SampledCase, filter_case, read_sampled_case
from lawshift.task.answers import format_answer, parse_answer
from lawshift.task.data import Case

THEFT = Case("某甲盗窃财物。", ("264",), "盗窃罪", 12)
INNOCENT = Case("某乙无罪。", (), "不违规", 0)
LIFE = Case("某丙故意杀人。", ("232",), "故意杀人罪", 10000)
TOLERANCES = (0, 2)


def filter_accepts(case: Case, text: str, finished: bool, tolerance: int) -> bool:
    """The filter stage's decision on one answer: a case of that one answer, accepted or not."""
    sampled = SampledCase(case.case_id, case, "prompt", (text,), (finished,))
    return filter_case(sampled, FilterParams(term_tolerance=tolerance, dedup=False)).accepted == 1


TABLE = [
    (THEFT, format_answer("盗窃罪", 12), True),
    (THEFT, format_answer("盗窃罪", 12), False),  # cut at max_new_tokens: never accepted
    (THEFT, format_answer("盗窃罪", 13), True),
    (THEFT, format_answer("盗窃罪", 14), True),
    (THEFT, format_answer("盗窃罪", 30), True),
    (THEFT, format_answer("诈骗罪", 12), True),
    (THEFT, "<answer> 不违规 </answer>", True),
    (THEFT, "<think>…</think> no answer block", True),
    (INNOCENT, "<answer> 不违规 </answer>", True),
    (INNOCENT, format_answer("盗窃罪", 12), True),
    (LIFE, format_answer("故意杀人罪", 10000), True),
    (LIFE, format_answer("故意杀人罪", 10001), True),  # death reads as XT too
    (LIFE, format_answer("故意杀人罪", 180), True),
]


@pytest.mark.parametrize("tolerance", TOLERANCES)
@pytest.mark.parametrize("case, text, finished", TABLE)
def test_binary_is_the_filters_decision(case, text, finished, tolerance):
    got = reward.score("binary", text, finished, case, tolerance, 0.5)
    assert got == float(filter_accepts(case, text, finished, tolerance))
    assert (reward.score("partial", text, finished, case, tolerance, 0.5) == 1.0) == (got == 1.0)


def test_partial_credits_the_charge_and_decays_with_the_terms_log_distance():
    def partial(text, case=THEFT, weight=0.5):
        return reward.score("partial", text, True, case, 0, weight)

    assert partial(format_answer("诈骗罪", 12)) == 0.0
    assert partial(format_answer("盗窃罪", 12)) == 1.0
    near, far, off = (partial(format_answer("盗窃罪", m)) for m in (13, 18, 25))
    assert 1.0 > near > far > off == 0.5  # 25 months: (1 + 25) / (1 + 12) = 2, the term earns nothing
    assert near == pytest.approx(0.5 + 0.5 * (1 - math.log(14 / 13) / math.log(2)))
    assert partial(format_answer("盗窃罪", 12), weight=0.2) == 1.0
    assert partial(format_answer("盗窃罪", 25), weight=0.2) == pytest.approx(0.2)
    assert partial(format_answer("故意杀人罪", 180), LIFE) == 0.5 and partial(format_answer("盗窃罪", 10000)) == 0.5


def test_the_trl_reward_function_scores_each_answer_and_reports_the_batch():
    seen = []
    fn = reward.reward_function("binary", 0, 0.5, [7], lambda step, ids, rewards: seen.append((step, ids, rewards)))
    texts = [format_answer("盗窃罪", 12), format_answer("盗窃罪", 12), "garbage"]
    ids = [[1, 2, 7], [1, 2, 3], [7]]  # the second was cut at the length limit: no eos
    got = fn(prompts=["p"] * 3, completions=texts, completion_ids=ids, charge=["盗窃罪"] * 3,
             prison_time=[12] * 3, trainer_state=None)
    assert got == [1.0, 0.0, 0.0] and seen == [(0, ids, got)]


def test_binary_equals_the_filter_on_every_answer_the_sample_stage_draws(project):
    """The table on real draws: the tiny model's answers to the small project's cases, finished or cut, plus each
    case's gold answer, so both decisions are in it."""
    root = project()
    done = run_stage(root, "sample", "round1")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = 0
    for index, line in enumerate((root / R1["samples"]).read_text(encoding="utf-8").splitlines()):
        sampled = read_sampled_case(json.loads(line), R1["samples"], index)
        gold = format_answer(sampled.case.charge, sampled.case.prison_time)
        for text, finished in [*zip(sampled.answers, sampled.finished, strict=True), (gold, True), (gold, False)]:
            for tolerance in TOLERANCES:
                got = reward.score("binary", text, finished, sampled.case, tolerance, 0.5)
                assert got == float(filter_accepts(sampled.case, text, finished, tolerance)), (text, finished)
                rows += 1
        assert parse_answer(gold) is not None
    assert rows >= 2 * 6 * (2 + 2)
