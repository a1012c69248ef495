"""The GRPO arm's budget: all rounds' answers by default, whole steps (rounded down, and said), the bad params that
fail in one line, and the meter a checkpoint keeps."""

from __future__ import annotations

import pytest

from lawshift.core import paths
from lawshift.core.files import InputError
from lawshift.core.params import params_from_dict
from lawshift.rl import budget

ROUNDS = {"round1": {"policy": "base"}, "round2": {"policy": "round1"}}
ANSWERS = {"round1": 1056, "round2": 688}  # the default run's (README)


def reader(counts: dict[str, int]):
    by_path = {paths.round_files(name)["sample_metrics"]: {"answers_generated": n} for name, n in counts.items()}
    return lambda path: by_path[path]


def params(**grpo):
    return params_from_dict({"rounds": ROUNDS, "sample": {"num_samples": 8}, "grpo": {"batch_size": 64, **grpo}})


def test_the_default_budget_is_every_rounds_answers_rounded_down_to_whole_steps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no dvc.yaml here: nothing to check the deps against
    plan = budget.plan(params(), reader(ANSWERS))
    assert (plan.budget, plan.steps, plan.answers, plan.group) == (1744, 27, 1728, 8)
    assert "round1 1056 + round2 688" in plan.source
    assert "rounded down to 27 steps, 1728 answers (16 unused)" in plan.note


def test_an_explicit_budget_of_whole_steps_says_nothing():
    plan = budget.plan(params(budget=640), reader({}))
    assert (plan.steps, plan.answers, plan.note, plan.source) == (10, 640, None, "grpo.budget")


@pytest.mark.parametrize("sample, grpo, key, fragment", [
    ({"num_samples": 1}, {"batch_size": 4}, "sample.num_samples", "needs >= 2 per case"),
    ({"num_samples": 8}, {"batch_size": 60}, "grpo.batch_size", "not a whole number of groups"),
    ({"num_samples": 8}, {"batch_size": 64, "budget": 63}, "grpo.budget", "less than one step"),
], ids=["one answer a group", "group does not divide the batch", "budget under one step"])
def test_bad_params_are_one_line_naming_params_yaml_and_the_key(sample, grpo, key, fragment):
    p = params_from_dict({"rounds": ROUNDS, "sample": sample, "grpo": grpo})
    with pytest.raises(InputError) as err:
        budget.plan(p, reader(ANSWERS))
    line = str(err.value)
    assert "\n" not in line and line.startswith("params.yaml") and key in line and fragment in line


def test_a_round_missing_from_the_grpo_deps_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages:\n  grpo:\n    deps:\n      - metrics/round1/sample.json\n")
    with pytest.raises(InputError, match="metrics/round2/sample.json"):
        budget.plan(params(), reader(ANSWERS))


def test_the_meter_counts_answers_tokens_and_signal_free_groups_and_survives_a_checkpoint(tmp_path):
    meter = budget.Meter(group=2)
    meter.add(1, [[1, 2, 3], [4]], [1.0, 1.0])
    meter.add(2, [[5, 6], [7, 8], [9], [1]], [0.0, 0.0, 1.0, 0.0])
    assert (meter.answers, meter.tokens) == (6, 10)
    assert meter.rows[-1] | {} == {"step": 2, "answers": 6, "tokens": 10, "reward": 0.25, "groups_all_0": 1,
                                   "groups_all_1": 0, "groups": 2}
    meter.save(tmp_path)
    back = budget.Meter.load(tmp_path)
    assert (back.answers, back.tokens, back.rows, back.group) == (6, 10, meter.rows, 2)
