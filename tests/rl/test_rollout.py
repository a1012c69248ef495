"""lawshift/rl/rollout.py: TRL's batch of repeated prompts grouped, and the rollout on the
tiny model: every answer of every case, the same draws for the same step, other draws for another step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import JUDGE

from lawshift.engines.generation import GenerationSettings
from lawshift.engines.hf_backend import eos_ids
from lawshift.rl.rollout import groups_of, rollout_function
from lawshift.task.prompts import render_prompt


@pytest.mark.parametrize("prompts, group, unique", [
    (["a", "a", "b", "b"], 2, ["a", "b"]),
    (["a", "a", "a"], 3, ["a"]),
    (["a", "a", "a", "a"], 2, ["a", "a"]),  # one case twice in a step: two groups
])
def test_groups_of(prompts, group, unique):
    assert groups_of(prompts, group) == unique


@pytest.mark.parametrize("prompts, group", [(["a", "a", "b"], 2), (["a", "b", "a", "b"], 2)])
def test_groups_of_refuses_a_batch_that_is_not_whole_runs(prompts, group):
    with pytest.raises(ValueError):
        groups_of(prompts, group)


@pytest.mark.slow
def test_rollout_draws_every_answer_the_same_for_a_step_and_afresh_for_the_next(tiny):
    group, settings = 3, GenerationSettings(n=3, temperature=1.0, top_p=1.0, max_new_tokens=24)
    article = [("264-0-0", "盗窃公私财物，数额较大的，处三年以下有期徒刑。")]
    prompts = [render_prompt(tiny.tokenizer, JUDGE.messages(fact, article)) for fact in ("甲盗窃。", "乙诈骗。")]
    batch = [p for p in prompts for _ in range(group)]
    rollout = rollout_function(tiny.tokenizer, settings, seed=0, group=group)
    trainer = SimpleNamespace(model=tiny.model, state=SimpleNamespace(global_step=0))
    tiny.model.train()
    first, again = rollout(batch, trainer), rollout(batch, trainer)
    assert tiny.model.training  # put back as it was
    assert first == again and first["logprobs"] is None
    assert len(first["prompt_ids"]) == len(first["completion_ids"]) == 6
    assert first["prompt_ids"][0] == tiny.tokenizer(prompts[0], add_special_tokens=False)["input_ids"]
    assert first["prompt_ids"][3] == first["prompt_ids"][5] != first["prompt_ids"][0]
    eos = set(eos_ids(tiny.model, tiny.tokenizer))
    for ids in first["completion_ids"]:
        assert 0 < len(ids) <= 24 and (ids[-1] in eos or len(ids) == 24) and not eos & set(ids[:-1])
    assert len({tuple(ids) for ids in first["completion_ids"][:3]}) > 1  # a group's answers differ
    trainer.state.global_step = 1
    assert rollout(batch, trainer)["completion_ids"] != first["completion_ids"]
