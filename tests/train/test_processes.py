"""Training on N processes (gloo on CPU, fp32, no dropout) learns what one process learns: the first step's LoRA
gradients, each answer's weight over an epoch of an odd number of answers, and the adapter after a few steps.
The processes are started as the stage starts them (lawshift/train/launch.py). A process killed mid-run fails the
stage in one line and leaves nothing behind; the rerun resumes, on the same number of processes only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from conftest import ENV, R1, REPO, read_json, run_stage, stage_cmd
from test_sftdata import make_records, write_jsonl

from lawshift.train.launch import launch

WORKER = Path(__file__).with_name("processes_worker.py")
COUNTS = [3, 2, 1, 1, 2]  # 9 answers, weights 1/3, 1/2, 1, 1, 1/2: no batch of 4 (or 2 x 2) divides them


def train(tmp_path: Path, base: Path, sft: Path, processes: int, max_steps: int) -> Path:
    out = tmp_path / f"p{processes}-s{max_steps}"
    out.mkdir()
    argv = [str(WORKER), str(base), str(sft), str(out), str(processes), str(max_steps)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    if processes == 1:
        subprocess.run([sys.executable, *argv], cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    else:
        launch(argv, processes, on_cpu=True, what="test")
    return out


def weights_per_answer(out: Path) -> Counter:
    got = Counter()
    for log in out.glob("weights-*.json"):
        for ids, weight in json.loads(log.read_text(encoding="utf-8")):
            got[tuple(ids)] += weight
    return got


def adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "adapter" / "adapter_model.safetensors")


@pytest.mark.slow
def test_two_processes_learn_what_one_learns(tmp_path, tiny, tiny_base):
    records = make_records(tiny.tokenizer, COUNTS)
    sft = write_jsonl(tmp_path / "sft.jsonl", records)
    one, two = (train(tmp_path, tiny_base, sft, p, max_steps=3) for p in (1, 2))

    # step 1: the averaged gradients of 2 processes x 2 answers are those of 1 process x 4 answers
    g1, g2 = torch.load(one / "grads.pt"), torch.load(two / "grads.pt")
    assert g1.keys() == g2.keys() and len(g1) > 0 and all(".lora_" in name for name in g1)
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-5, atol=1e-8)
    # three steps of AdamW on them: the same adapter to float tolerance (the order of a sum differs, nothing else)
    a1, a2 = adapter(one), adapter(two)
    for name in a1:
        torch.testing.assert_close(a2[name], a1[name], rtol=1e-4, atol=1e-6)

    # 3 steps of 4 are one epoch of 9 answers and 3 weight-0 pads: each answer once, with its own weight
    w1, w2 = weights_per_answer(one), weights_per_answer(two)
    assert len(w1) == len(records) and sum(w1.values()) == pytest.approx(len(COUNTS))
    assert w2.keys() == w1.keys() and all(w2[k] == pytest.approx(w1[k]) for k in w1)
    assert sorted(len(json.loads(p.read_text())) for p in two.glob("weights-*.json")) == [6, 6]


def children_by_rank(pid: int, count: int, timeout: float = 120) -> dict[str, psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {c.environ().get("RANK"): c for c in psutil.Process(pid).children()}
        if len(found) == count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"the stage did not start {count} processes")


@pytest.mark.slow
def test_a_killed_process_fails_the_stage_in_one_line_and_the_rerun_resumes(project, tiny):
    train = {"num_train_epochs": 2, "per_device_train_batch_size": 4, "warmup_steps": 0, "logging_steps": 1,
             "save_steps": 1, "max_length": 1024, "lora_r": 4, "device": "cpu", "num_processes": 2}
    root = project(params={"train": train})
    write_jsonl(root / R1["sft"], make_records(tiny.tokenizer, COUNTS))  # 9 answers: 3 steps an epoch, 6 in all
    ckpts = root / R1["checkpoints"]
    proc = subprocess.Popen(stage_cmd("train", "round1"), cwd=root, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    ranks = children_by_rank(proc.pid, 2)
    deadline = time.monotonic() + 300
    while not (ckpts / "checkpoint-2" / "trainer_state.json").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.05)
    ranks["1"].kill()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.strip().splitlines()[-1].startswith("error: ") and "process 1 of 2 ended with exit code -9" in err
    assert not (root / R1["adapter"]).exists() and not (root / R1["train_metrics"]).exists()
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks.values())

    # another number of processes: refused, naming both, and the checkpoints kept
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["num_processes"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    refused = run_stage(root, "train", "round1")
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 2 and last.startswith("error: params.yaml: field 'train.num_processes'")
    assert "on 2 processes and this run has 1" in last
    assert (ckpts / "checkpoint-2").is_dir()

    params["train"]["num_processes"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    rerun = run_stage(root, "train", "round1")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert read_json(root / R1["train_time"])["resumed_from"] in ("checkpoint-2", "checkpoint-3")
    assert read_json(root / R1["train_metrics"])["steps"] == 6 and (root / R1["adapter"]).is_dir()
