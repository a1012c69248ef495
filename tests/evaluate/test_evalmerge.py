"""lawshift/evaluate/evalmerge.py and the eval stage's shard options: shards of one eval, merged, are the unsharded
run's
outputs byte for byte; shards of different runs, a missing shard or a prompt answered twice are refused."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ENV, EV, run_stage

from lawshift.core.files import InputError, write_jsonl
from lawshift.evaluate import evalmerge

IDS = ["f/original/0", "f/original/1", "f/poisoned/0", "train/3"]


def rec(pid: str, sample: int = 0) -> dict:
    return {"id": pid, "sample": sample, "split": pid.split("/")[1] if "/" in pid else "train"}


def shard(tmp_path, index, num_shards=2, run="r", records=None, ids=IDS, k=1):
    head = {"eval_shard": {"index": index, "num_shards": num_shards, "run": run, "settings": {}, "ids": ids, "k": k,
                           "missing": 0}}
    path = tmp_path / f"predictions.shard{index}-of-{num_shards}.jsonl"
    mine = ids[index::num_shards] if records is None else records
    write_jsonl(path, [head, *[rec(pid, j) for pid in mine for j in range(k)]])
    return path


@pytest.mark.parametrize("make, message", [
    (lambda t: [shard(t, 0)], r"shards \[0\] of 2"),
    (lambda t: [shard(t, 0), shard(t, 1, run="other")], "another run"),
    (lambda t: [shard(t, 0), shard(t, 1, num_shards=3)], "another run"),
    (lambda t: [shard(t, 0), shard(t, 1, records=["f/original/1"])], "1 of its prompts without exactly 1"),
    (lambda t: [shard(t, 0), shard(t, 1, records=["f/original/1", "train/3", "train/3"])], "without exactly"),
    (lambda t: [shard(t, 0), shard(t, 1, records=["f/original/1", "train/3", "f/original/0"])], "not this shard"),
    (lambda t: [], "no eval shard files"),
])
def test_bad_shards_are_refused_naming_the_file(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        evalmerge.merge_records(make(tmp_path))


def test_a_file_without_a_shard_header_is_refused(tmp_path):
    path = tmp_path / "predictions.shard0-of-2.jsonl"
    write_jsonl(path, [rec("f/original/0")])
    with pytest.raises(InputError, match="record 1|:1: no eval shard header"):
        evalmerge.merge_records([path])


def test_merged_records_follow_the_whole_runs_prompt_order(tmp_path):
    _, records = evalmerge.merge_records([shard(tmp_path, 1, k=2), shard(tmp_path, 0, k=2)])
    assert [(r["id"], r["sample"]) for r in records] == [
        (pid, j) for pid in IDS for j in range(2)]


@pytest.mark.slow
def test_two_eval_shards_merged_are_the_unsharded_outputs(project):
    root = project(n_train=6, params={"eval": {"batch_size": 4, "num_samples": 2, "temperature": 0.7}})
    outs = ["predictions", "metrics", "report", "folders_plot", "term_errors_plot"]
    assert run_stage(root, "eval").returncode == 0
    whole = {k: (root / EV["base"][k]).read_bytes() for k in outs}
    for k in outs:
        (root / EV["base"][k]).unlink()
    for i in range(2):
        proc = run_stage(root, "eval", "base", "--shard-index", str(i), "--num-shards", "2")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "python -m lawshift.evaluate.evalmerge --model base" in proc.stdout
    merged = subprocess.run([sys.executable, "-m", "lawshift.evaluate.evalmerge", "--model", "base"], cwd=root, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert {k: (root / EV["base"][k]).read_bytes() for k in outs} == whole
    assert (root / EV["base"]["time"]).is_file()
