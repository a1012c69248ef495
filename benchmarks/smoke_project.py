"""The GPU smoke run's scratch project: the repository's sources, a data root of a few cases, the smoke params,
and the environment each stage gets (the caller's shell, never what the smoke process imported).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from benchmarks import SHELL_ENV

REPO = Path(__file__).resolve().parents[1]
COPIED = ("stages", "lawshift", "prompts", "params.yaml", "data/lawshift-sample")  # what a stage needs
SAMPLE = "data/lawshift-sample"
ROOT = "data/smoke"  # the scratch project's data root
FOLDER = "action_explicit_extend"  # the sample's first folder: the only one evaluated
SPLITS = ("original", "poisoned")
MEMORY_SHARE = 0.3  # of the GPU, per vLLM engine


def source_files() -> list[str]:
    """The repository's files under COPIED: tracked and untracked-but-not-ignored, or every file without git."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *COPIED],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout
        return sorted(set(out.splitlines()))
    except (OSError, subprocess.CalledProcessError):
        found = []
        for rel in COPIED:
            top = REPO / rel
            paths = [top] if top.is_file() else (p for p in top.rglob("*") if p.is_file())
            found += [str(p.relative_to(REPO)) for p in paths if "__pycache__" not in p.parts]
        return sorted(found)


def copy_sources(project: Path) -> int:
    count = 0
    for rel in source_files():
        if (REPO / rel).is_file():  # a tracked file deleted in the working tree is skipped
            (project / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, project / rel)
            count += 1
    return count


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_json(path: Path, obj, indent: int | None = None) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, ensure_ascii=False, indent=indent), encoding="utf-8")


def make_data_root(project: Path, cases: int, eval_cases: int) -> None:
    """data/smoke: the sample's articles and folders, its first `cases` training cases, `eval_cases` per split."""
    dst = project / ROOT
    shutil.copytree(project / SAMPLE, dst)
    write_json(dst / "training_set.json", read_json(dst / "training_set.json")[:cases])
    if eval_cases > 0:
        for split_file in (f for split in SPLITS for f in dst.glob(f"*/{split}.json")):
            write_json(split_file, read_json(split_file)[:eval_cases])


def merge(base: dict, over: dict) -> dict:
    """`over` merged into `base` recursively (in place); returns `base`."""
    for key, value in over.items():
        base[key] = merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return base


def set_params(project: Path, changes: dict) -> dict:
    """Merge `changes` into the project's params.yaml (as tests/conftest.py does); returns the new params."""
    path = project / "params.yaml"
    params = merge(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, changes)
    path.write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return params


def smoke_params(args: argparse.Namespace) -> dict:
    device = "cpu" if args.allow_cpu else "cuda"
    return {
        "data": {"root": ROOT, "train_articles": f"{ROOT}/criminal_law_articles.json"},
        # 150 warm-start steps instead of 300: half the base stage's time, and the base still answers in format
        "model": {"base": "tiny", "tiny": {"warmup_steps": args.warmup_steps}},
        "sample": {"device": device, "gpu_memory_utilization": MEMORY_SHARE},
        "train": {"device": device, "load_in_4bit": True, "optim": "paged_adamw_32bit", "max_steps": args.max_steps},
        "eval": {"device": device, "backend": "vllm", "folders": [FOLDER], "train_subset": args.cases,
                 "gpu_memory_utilization": MEMORY_SHARE},
    }


def stage_env(project: Path, shell: Mapping[str, str] = SHELL_ENV) -> dict:
    """A stage's environment as `dvc repro` gives it: the caller's shell as it was before this process imported
    anything (lawshift, torch, vLLM each add to os.environ), with the scratch project first on PYTHONPATH and this
    interpreter's bin first on PATH. Whatever else a stage needs it sets itself (offline hub, GPU settings)."""
    inherited = shell.get("PYTHONPATH")
    return {**shell, "PYTHONPATH": os.pathsep.join(filter(None, [str(project), inherited])),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{shell.get('PATH', '')}"}
