"""The train stage on 1 and on N processes: tokens/s of each and the ratio (`python -m benchmarks train --processes`).

    python -m benchmarks train --processes 1,2

Each run is the real stage, `python stages/train.py round1`, in a scratch folder holding params.yaml (with
train.num_processes set), models/base and the round's sft.jsonl; it reads the stage's own time file
(train_tokens_per_second: the tokens of all processes over rank 0's training time). On CPU the processes split the
threads (lawshift/train/launch.py), so the ratio shows what N processes cost or gain on this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from lawshift.core import paths

REPO = Path(__file__).resolve().parent.parent
ROUND = "round1"


def run_stage(processes: int, params: dict, sft: Path) -> dict:
    """One train stage run on `processes` processes in a scratch folder; its time file, plus the stage's wall time."""
    where = paths.round_files(ROUND)
    with tempfile.TemporaryDirectory(prefix="bench-processes-") as tmp:
        root = Path(tmp)
        train = {**params["train"], "num_processes": processes, "save_steps": 10**9}
        (root / "params.yaml").write_text(yaml.safe_dump({**params, "train": train}), encoding="utf-8")
        shutil.copytree(REPO / paths.BASE, root / paths.BASE)
        (root / where["sft"]).parent.mkdir(parents=True)
        shutil.copy(sft, root / where["sft"])
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        start = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "stages" / "train.py"), ROUND], cwd=root, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        timing = json.loads((root / where["train_time"]).read_text(encoding="utf-8"))
        metrics = json.loads((root / where["train_metrics"]).read_text(encoding="utf-8"))
    return {"processes": processes, "train_tokens_per_second": timing["train_tokens_per_second"],
            "stage_seconds": round(wall, 2), "steps": metrics["steps"], "train_loss": metrics["train_loss"],
            "device": timing["device"]}


def compare(counts: list[int], params_file: Path, sft: Path) -> dict:
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    runs = []
    for n in counts:
        print(f"bench train: {n} process(es)", file=sys.stderr)
        runs.append(run_stage(n, params, sft))
    first = runs[0]["train_tokens_per_second"]
    return {"processes": {"data": str(sft), "runs": runs,
                          "ratios": {str(r["processes"]): round(r["train_tokens_per_second"] / first, 3)
                                     for r in runs[1:]}}}


def show(result: dict) -> None:
    p = result["processes"]
    print(f"train stage on N processes: {p['data']}")
    for r in p["runs"]:
        print(f"  {r['processes']} process(es)  {r['train_tokens_per_second']:>8.1f} tok/s  stage "
              f"{r['stage_seconds']:.1f} s  steps {r['steps']}  train_loss {r['train_loss']}  ({r['device']})")
    base = p["runs"][0]["processes"]
    for n, ratio in p["ratios"].items():
        print(f"  {n} / {base} process(es): x{ratio} tokens/s")
