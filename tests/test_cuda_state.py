"""The first real GPU run: what a stage does before and at vLLM's engine start, proven on CPU.

* No CUDA state before the engine: the stages run with tests/cuda_tripwire on PYTHONPATH, which makes torch look
  like a CUDA build whose driver entry points raise until `vllm.LLM` is built (vLLM forks its engine from the
  stage's process unless told otherwise, and a forked child cannot use a driver its parent initialised).
* The settings reach the engine: the stand-in vLLM logs the environment at engine start.
* Prompts reach vLLM as the project counts them: with a tokenizer that adds a BOS, no prompt gains a token.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ENV, R1, REPO, read_json, run_stage

from lawshift.engines import gpuenv

STANDIN = REPO / "tests" / "vllm_standin"
TRIPWIRE = REPO / "tests" / "cuda_tripwire"
PARAMS = {"sample": {"backend": "vllm", "num_samples": 2, "max_new_tokens": 24, "temperature": 1.0},
          "eval": {"backend": "vllm", "max_new_tokens": 24, "train_subset": 2}}
# The environment without what lawshift or vLLM would set: each test starts from a shell that has none of it.
CLEAN = {k: v for k, v in ENV.items() if k not in gpuenv.DEFAULTS and k != "VLLM_BATCH_INVARIANT"}


def env_with(log: Path, *paths: Path) -> dict:
    return {**CLEAN, "PYTHONPATH": os.pathsep.join([str(REPO), *map(str, paths)]), "VLLM_STANDIN_LOG": str(log),
            "VLLM_STANDIN_THREADS": "1"}


def python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def inits(log: Path) -> list[dict]:
    return [e for e in map(json.loads, log.read_text(encoding="utf-8").splitlines()) if e["event"] == "init"]


@pytest.mark.slow
def test_the_tripwire_fires_on_a_driver_query_and_lets_nvml_answer(tmp_path):
    """The control: without the NVML setting, torch.cuda.is_available() would initialise the driver."""
    env = env_with(tmp_path / "log", TRIPWIRE)
    plain = python("import torch; torch.cuda.is_available()", env)
    assert plain.returncode != 0 and "CUDA tripwire: cudaGetDeviceCount" in plain.stderr
    nvml = python("import torch; print(torch.cuda.is_available())", {**env, "PYTORCH_NVML_BASED_CUDA_CHECK": "1"})
    assert nvml.returncode == 0 and nvml.stdout.strip() == "True"
    lazy = python("import torch; torch.cuda.init()", {**env, "PYTORCH_NVML_BASED_CUDA_CHECK": "1"})
    assert lazy.returncode != 0 and "CUDA tripwire: torch._C._cuda_init" in lazy.stderr


@pytest.mark.slow
def test_sample_and_eval_touch_no_cuda_before_the_vllm_engine(project, tmp_path):
    root, log = project(n_train=4, n_test=2, params=PARAMS), tmp_path / "vllm.jsonl"
    env = env_with(log, STANDIN, TRIPWIRE)
    for stage, args in (("sample", ("round1",)), ("eval", ("base",))):
        proc = run_stage(root, stage, *args, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_json(root / R1["sample_metrics"])["cases"] == 4
    engines = inits(log)
    assert len(engines) == 2
    for engine in engines:  # what each engine start saw: the stage's own settings, not vLLM's import-time ones
        assert engine["env"] == {**gpuenv.DEFAULTS, "VLLM_BATCH_INVARIANT": None}
        assert engine["mp_method"] == "spawn"


@pytest.mark.parametrize("shell, expected", [
    ({}, gpuenv.DEFAULTS),
    ({"VLLM_WORKER_MULTIPROC_METHOD": "fork"}, {**gpuenv.DEFAULTS, "VLLM_WORKER_MULTIPROC_METHOD": "fork"}),
    ({"VLLM_NO_USAGE_STATS": "0", "PYTORCH_NVML_BASED_CUDA_CHECK": "0"},
     {**gpuenv.DEFAULTS, "VLLM_NO_USAGE_STATS": "0", "PYTORCH_NVML_BASED_CUDA_CHECK": "0"}),
], ids=["defaults", "user-fork", "user-values"])
def test_importing_the_package_sets_the_gpu_defaults_a_user_value_wins(shell, expected):
    code = f"import json, os, lawshift; print(json.dumps({{k: os.environ.get(k) for k in {list(expected)!r}}}))"
    proc = python(code, {**CLEAN, "PYTHONPATH": str(REPO), **shell})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == expected


@pytest.mark.slow
def test_batch_invariant_reaches_the_engine(project, tmp_path):
    params = {**PARAMS, "sample": {**PARAMS["sample"], "batch_invariant": True}}
    root, log = project(n_train=2, n_test=2, params=params), tmp_path / "vllm.jsonl"
    proc = run_stage(root, "sample", env=env_with(log, STANDIN))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (engine,) = inits(log)
    assert engine["env"]["VLLM_BATCH_INVARIANT"] == "1"


def bos_base(tiny_base: Path, dst: Path) -> tuple[Path, int]:
    """The tiny base with a tokenizer that puts <|endoftext|> first when asked for special tokens (as a Llama- or
    Gemma-style tokenizer adds its BOS); the id of that token."""
    shutil.copytree(tiny_base, dst)
    tokenizer = json.loads((dst / "tokenizer.json").read_text(encoding="utf-8"))
    (bos,) = [t["id"] for t in tokenizer["added_tokens"] if t["content"] == "<|endoftext|>"]
    first = {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}
    tokenizer["post_processor"] = {
        "type": "TemplateProcessing", "single": [first, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [first, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [bos], "tokens": ["<|endoftext|>"]}}}
    (dst / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    config = json.loads((dst / "tokenizer_config.json").read_text(encoding="utf-8"))
    (dst / "tokenizer_config.json").write_text(json.dumps({**config, "bos_token": "<|endoftext|>"}), encoding="utf-8")
    return dst, bos


@pytest.mark.slow
def test_prompts_reach_vllm_without_a_bos_the_stage_did_not_count(project, tiny_base, tmp_path):
    from lawshift.core.models import load_tokenizer

    root, log = project(n_train=4, n_test=2, params=PARAMS, base=False), tmp_path / "vllm.jsonl"
    base, bos = bos_base(tiny_base, root / "models" / "base")
    tokenizer = load_tokenizer(str(base))
    assert tokenizer("x")["input_ids"][0] == bos != tokenizer("x", add_special_tokens=False)["input_ids"][0]
    proc = run_stage(root, "sample", env=env_with(log, STANDIN))
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (root / R1["samples"]).read_text(encoding="utf-8").splitlines()]
    counted = {r["prompt"]: len(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]) for r in records}
    assert [r["prompt_tokens"] for r in records] == [counted[r["prompt"]] for r in records]
    requests = [q for e in map(json.loads, log.read_text(encoding="utf-8").splitlines()) if e["event"] == "generate"
                for q in e["requests"]]
    assert len(requests) == 4 and all(q["prompt_tokens"] == counted[q["prompt"]] for q in requests)
