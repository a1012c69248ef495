"""The grpo stage on the tiny model (a few GRPO steps in the small project): it stops at the budget and counts what
it generated; two runs give the same adapter bytes; a SIGKILL after a checkpoint resumes from it without paying for
or counting an answer twice; bad params fail in one line before any model loads. TRL's log-probs scored on the
answer positions alone equal those it scores on every position."""

from __future__ import annotations

import shutil
import signal

import pytest
from conftest import interrupt_when, read_json, run_stage, set_params, stage_cmd

from lawshift.core import paths
from lawshift.rl.grpo import score_answers_only

G = paths.GRPO_FILES
BUDGET = {"grpo": {"budget": 14}}  # steps of 4 answers (2 cases x 2): 3 steps, 12 answers, 2 left unused


def steps_rows(root) -> list[dict]:
    lines = (root / G["steps"]).read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]


@pytest.mark.slow
def test_grpo_stops_at_the_budget_counts_what_it_generated_and_repeats_to_the_byte(project, tmp_path):
    first = project(params=BUDGET)
    second = shutil.copytree(first, tmp_path / "second")
    runs = [run_stage(root, "grpo") for root in (first, second)]
    for done in runs:
        assert done.returncode == 0, done.stderr[-3000:]
    assert "rounded down to 3 steps, 12 answers (2 unused)" in runs[0].stderr
    m = read_json(first / G["metrics"])
    assert (m["answers_generated"], m["budget"], m["budget_unused"], m["steps"]) == (12, 14, 2, 3)
    rows = steps_rows(first)
    assert [(int(r["step"]), int(r["answers"])) for r in rows] == [(1, 4), (2, 8), (3, 12)]
    assert int(rows[-1]["tokens"]) == m["generated_tokens"] > 0
    assert not (first / G["checkpoints"]).exists()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (first / G["adapter"] / name).read_bytes() == (second / G["adapter"] / name).read_bytes(), name
    assert read_json(second / G["metrics"]) == m


@pytest.mark.slow
def test_grpo_killed_after_a_checkpoint_resumes_without_paying_twice(project, tmp_path):
    killed = project(params=BUDGET)
    straight = shutil.copytree(killed, tmp_path / "straight")
    ckpts = killed / G["checkpoints"]
    status = interrupt_when(stage_cmd("grpo"), killed, lambda: any(ckpts.glob(f"checkpoint-*/{paths.METER}")),
                            signal.SIGKILL, log=tmp_path / "killed.log")
    assert status == -signal.SIGKILL
    assert not (killed / G["adapter"]).exists() and not (killed / G["metrics"]).exists()
    for root in (killed, straight):
        done = run_stage(root, "grpo")
        assert done.returncode == 0, done.stderr[-3000:]
    assert read_json(killed / G["time"])["resumed_from"].startswith("checkpoint-")
    assert read_json(straight / G["time"])["resumed_from"] is None
    resumed, reference = read_json(killed / G["metrics"]), read_json(straight / G["metrics"])
    assert resumed["answers_generated"] == reference["answers_generated"] == 12
    assert [r["answers"] for r in steps_rows(killed)] == ["4", "8", "12"]
    assert resumed["generated_tokens"] == reference["generated_tokens"]


@pytest.mark.slow
@pytest.mark.parametrize("params, key", [
    ({"sample": {"num_samples": 1}}, "sample.num_samples"),
    ({"grpo": {"batch_size": 3}}, "grpo.batch_size"),
    ({"grpo": {"budget": 3}}, "grpo.budget"),
    ({"grpo": {"reward": "dense"}}, "grpo.reward"),
], ids=["one answer a group", "group does not divide the batch", "budget under one step", "unknown reward"])
def test_bad_grpo_params_fail_in_one_line(project, params, key):
    root = project(base=False)
    set_params(root, params)
    done = run_stage(root, "grpo")
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: params.yaml") and key in lines[0], lines
    assert not (root / G["checkpoints"]).exists() and not (root / G["metrics"]).exists()


def test_scoring_the_answers_alone_gives_every_positions_log_probs(tiny, monkeypatch):
    import copy

    import torch
    from trl.trainer import utils

    model = copy.deepcopy(tiny.model)
    utils.add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    ids = tiny.tokenizer("甲盗窃公私财物。<think>盗窃</think><answer> 盗窃罪 | 6 </answer>", return_tensors="pt")
    labels = ids["input_ids"].clone()
    labels[:, :-8] = -100  # the answer's last 8 tokens are scored, as TRL scores a completion

    def scored():
        model.zero_grad()
        out = model(**ids, labels=labels, fused_lm_head=True)
        (out.log_probs.sum() + out.entropy.sum()).backward()
        return out.log_probs.detach(), out.entropy.detach(), [p.grad.clone() for p in model.parameters()]

    every = scored()
    monkeypatch.setattr(utils, "_use_triton", utils._use_triton)  # put back after the test
    score_answers_only()
    assert utils._use_triton(torch.device("cpu"))  # TRL now takes its compact path on the CPU
    alone = scored()
    logits = tiny.model(**ids).logits[0, :-1].float()
    direct = torch.log_softmax(logits, -1).gather(-1, ids["input_ids"][0, 1:, None])[:, 0]
    mask = labels[0, 1:] != -100
    for got in (every, alone):
        torch.testing.assert_close(got[0][0][mask], direct[mask], rtol=1e-5, atol=1e-5)
        assert not got[0][0][~mask].any()
    torch.testing.assert_close(alone[1], every[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(alone[2], every[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
