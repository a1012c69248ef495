"""The grpo stage on the tiny model (a few GRPO steps in the small project): it stops at the budget and counts what
it generated; two runs give the same adapter bytes; a SIGKILL after a checkpoint resumes from it without paying for
or counting an answer twice; bad params fail in one line before any model loads."""

from __future__ import annotations

import shutil
import signal

import pytest
from conftest import interrupt_when, read_json, run_stage, set_params, stage_cmd

from lawshift.core import paths

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
