"""The GPU path end to end on CPU: stages/sample.py, filter.py and eval.py with `backend: vllm`, against the stand-in
`vllm` package of tests/vllm_standin (vLLM's names and attributes, its child-seed rule, LoRARequest), which logs
every engine it builds and every `LLM.generate` call it answers.

What a GPU run relies on, proven through the same code: one engine call per chunk (the whole training set by
default), a stream per (case, answer) that no other pair shares and that sharding leaves unchanged, no truncated
answer accepted, eval@round1 and round 2's sampling served as base + round 1's adapter through a LoRARequest,
`model.allow_pickle` as `load_format`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import ENV, EV, R1, REPO, read_json, run_stage, set_params

from lawshift.core import paths
from lawshift.engines.generation import stream_seed

STANDIN = REPO / "tests" / "vllm_standin"
SEED = 0
N = 4  # answers per case
# Long enough for most answers of the tiny base to end at eos, short enough for some to be cut: both kinds occur.
MAX_NEW = 40
PARAMS = {
    "seed": SEED,
    "sample": {"backend": "vllm", "num_samples": N, "max_new_tokens": MAX_NEW, "temperature": 1.0, "top_p": 0.95},
    "train": {"lora_r": 4, "max_steps": 4},
    "eval": {"backend": "vllm", "max_new_tokens": 48, "train_subset": 3},
}


def vllm_env(log: Path) -> dict:
    # One torch thread in the stand-in: its per-request loops gain nothing from more on a busy 2-core runner.
    return {**ENV, "PYTHONPATH": os.pathsep.join([str(REPO), str(STANDIN)]), "VLLM_STANDIN_LOG": str(log),
            "VLLM_STANDIN_THREADS": "1"}


def events(log: Path, kind: str) -> list[dict]:
    return [e for e in map(json.loads, log.read_text(encoding="utf-8").splitlines()) if e["event"] == kind]


def ok(proc) -> str:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def case_streams(log: Path, records: list[dict]) -> dict[int, list[int]]:
    """Case index -> the child seeds its answers drew from, read off the stand-in's log of generate calls."""
    by_prompt = {rec["prompt"]: rec["index"] for rec in records}
    out = {}
    for call in events(log, "generate"):
        for req in call["requests"]:
            out[by_prompt[req["prompt"]]] = req["child_seeds"]
    return out


@pytest.fixture
def vllm_project(project):
    return project(n_train=8, n_test=3, params=PARAMS)


def test_sample_filter_train_eval_through_vllm(vllm_project, tmp_path):
    root, log = vllm_project, tmp_path / "vllm.jsonl"
    env = vllm_env(log)

    # --- sample: one engine, one call for all 8 cases, every (case, answer) its own stream
    out = ok(run_stage(root, "sample", env=env))
    (init,) = events(log, "init")
    assert init["load_format"] == "safetensors" and not init["enable_lora"] and init["seed"] == SEED
    (call,) = events(log, "generate")
    assert call["prompts"] == 8
    records = [json.loads(x) for x in (root / R1["samples"]).read_text(encoding="utf-8").splitlines()]
    streams = case_streams(log, records)
    assert streams == {i: [stream_seed(SEED, i) + j for j in range(N)] for i in range(8)}
    drawn = [s for seeds in streams.values() for s in seeds]
    assert len(set(drawn)) == len(drawn) == 8 * N
    assert read_json(root / R1["sample_time"])["backend"] == "vllm" and "sample@round1:" in out

    # --- the same streams and answers in 2 shards of 3-case chunks: a case's streams are its own
    shard_log = tmp_path / "shards.jsonl"
    (root / "params.yaml").write_text((root / "params.yaml").read_text(encoding="utf-8").replace(
        "chunk_size: 1024", "chunk_size: 3", 1), encoding="utf-8")
    for i in (0, 1):
        ok(run_stage(root, "sample", "--shard-index", str(i), "--num-shards", "2", env=vllm_env(shard_log)))
    sharded = [json.loads(x) for i in (0, 1) for x in (root / f"outputs/round1/samples.shard{i}-of-2.jsonl").read_text(
        encoding="utf-8").splitlines()[1:]]
    assert [c["prompts"] for c in events(shard_log, "generate")] == [3, 1, 3, 1]
    assert case_streams(shard_log, sharded) == streams
    assert sorted(sharded, key=lambda r: r["index"]) == records

    # --- filter: a truncated answer is never accepted, and every one is counted
    answers = [(rec, a) for rec in records for a in rec["answers"]]
    cut = [(rec, a) for rec, a in answers if not a["finished"]]
    assert cut and len(cut) < len(answers)  # both kinds occur, so the check below can fail
    ok(run_stage(root, "filter", env=env))
    stats = read_json(root / R1["filter_metrics"])
    assert stats["truncated"] == len(cut)
    finished = {(rec["case_id"], a["text"]) for rec, a in answers if a["finished"]}
    sft = [json.loads(x) for x in (root / R1["sft"]).read_text(encoding="utf-8").splitlines()]
    assert sft and all((r["case_id"], r["response"]) in finished for r in sft)

    # --- train (QLoRA on CPU), then eval: base as it is, sft as base + adapter through a LoRARequest
    ok(run_stage(root, "train", env=env, timeout=900))
    ok(run_stage(root, "eval", "base", env=env))
    ok(run_stage(root, "eval", "round1", env=env))
    base_init, sft_init = events(log, "init")[1:]
    assert not base_init["enable_lora"] and sft_init["enable_lora"] and sft_init["max_lora_rank"] == 8
    eval_calls = events(log, "generate")[1:]
    n_items = 2 * 3 + 3  # both splits of the folder, and the training subset
    base_calls, sft_calls = eval_calls[:1], eval_calls[1:]
    assert [c["prompts"] for c in eval_calls] == [n_items, n_items]
    assert all(r["lora_path"] is None for c in base_calls for r in c["requests"])
    assert all(r["lora_path"] == R1["adapter"] for c in sft_calls for r in c["requests"])
    for name in EV:
        metrics = read_json(root / EV[name]["metrics"])
        preds = [json.loads(x) for x in (root / EV[name]["predictions"]).read_text("utf-8").splitlines()]
        share = sum(not r["finished"] for r in preds if r["split"] != "train") / (2 * 3)
        assert metrics["overall"]["truncated"] == round(share, 6)
        assert read_json(root / EV[name]["time"])["wall_seconds"] > 0

    # --- round 2 samples from base + round 1's adapter: one LoRA engine, every request through the adapter
    ok(run_stage(root, "sample", "round2", env=env))
    (r2_init,) = events(log, "init")[3:]
    assert r2_init["enable_lora"] and r2_init["max_lora_rank"] == 8
    r2_calls = events(log, "generate")[3:]  # chunks of 3 cases (the chunk size set above)
    assert [c["prompts"] for c in r2_calls] == [3, 3, 2]
    assert all(r["lora_path"] == R1["adapter"] for c in r2_calls for r in c["requests"])
    # its streams are round 2's own: none of round 1's seeds again
    r1_seeds = {s for r in events(log, "generate")[0]["requests"] for s in r["child_seeds"]}
    assert not r1_seeds & {s for c in r2_calls for r in c["requests"] for s in r["child_seeds"]}
    assert read_json(root / paths.round_files("round2")["sample_metrics"])["cases"] == 8

    # --- round 2 again through a Ray pool of two stand-in engines: the same records, every request its seeds and
    # its LoRARequest (the driver computes the seeds; the adapter reaches the workers by absolute path)
    r2 = paths.round_files("round2")["samples"]
    one = (root / r2).read_bytes()
    (root / r2).unlink()
    pool_log = tmp_path / "pool.jsonl"
    set_params(root, {"sample": {"workers": 2}})
    ok(run_stage(root, "sample", "round2", env=vllm_env(pool_log)))
    assert (root / r2).read_bytes() == one
    inits = events(pool_log, "init")
    assert len(inits) == 2 and all(i["enable_lora"] and i["max_lora_rank"] == 8 for i in inits)
    pool_calls = events(pool_log, "generate")
    assert sorted(c["prompts"] for c in pool_calls) == [1, 1, 1, 1, 2, 2]  # chunks 3, 3, 2: pieces 2+1, 2+1, 1+1
    assert all(r["lora_path"] == str((root / R1["adapter"]).resolve()) for c in pool_calls for r in c["requests"])
    seeds = {r["prompt"]: r["child_seeds"] for c in r2_calls for r in c["requests"]}
    assert {r["prompt"]: r["child_seeds"] for c in pool_calls for r in c["requests"]} == seeds


def test_allow_pickle_reaches_vllm_as_load_format(vllm_project, tmp_path):
    root, log = vllm_project, tmp_path / "vllm.jsonl"
    params = (root / "params.yaml").read_text(encoding="utf-8").replace("allow_pickle: false", "allow_pickle: true")
    (root / "params.yaml").write_text(params, encoding="utf-8")
    ok(run_stage(root, "eval", "base", env=vllm_env(log)))
    (init,) = events(log, "init")
    assert init["load_format"] == "auto"


def test_eval_sft_without_an_adapter_is_a_one_line_error(vllm_project, tmp_path):
    proc = run_stage(vllm_project, "eval", "round1", env=vllm_env(tmp_path / "vllm.jsonl"))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "error: models/round1: no adapter_model.safetensors: run the train stage first"
    assert not (tmp_path / "vllm.jsonl").exists()  # refused before any engine was built
