"""The whole pipeline on the tiny model, driven the way researchers drive it: dvc repro, dvc exp run, metrics diff.

Runs in a temporary copy of the repository with its own git history and a smaller data root, so it is the real
`dvc.yaml` and the real stage scripts, only on fewer cases and shorter training.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Small but complete: every stage runs its real code path.
OVERRIDES = {
    "data": {"root": "data/small", "train_articles": "data/small/criminal_law_articles.json"},
    "model": {"tiny": {"hidden_size": 64, "intermediate_size": 256, "vocab_size": 2000,
                       "max_position_embeddings": 2048, "warmup_steps": 120}},
    "sample": {"num_samples": 4, "max_new_tokens": 48, "batch_size": 8},
    "train": {"num_train_epochs": 1, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
              "warmup_steps": 0, "logging_steps": 1, "save_steps": 50, "max_length": 1024},
    "eval": {"max_new_tokens": 48, "train_subset": 8, "batch_size": 8},
}


def _merge(base: dict, over: dict) -> dict:
    for key, value in over.items():
        base[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def _small_root(src: Path, dst: Path, n_train: int = 12, n_test: int = 6) -> None:
    """A LawShift root with the first cases of each file: the real records, fewer of them."""
    dst.mkdir(parents=True)
    shutil.copy(src / "criminal_law_articles.json", dst)
    train = json.loads((src / "training_set.json").read_text(encoding="utf-8"))[:n_train]
    (dst / "training_set.json").write_text(json.dumps(train, ensure_ascii=False), encoding="utf-8")
    folder = "action_explicit_extend"
    (dst / folder).mkdir()
    for name in ("articles_original.json", "articles_poisoned.json"):
        shutil.copy(src / folder / name, dst / folder)
    for split in ("original", "poisoned"):
        cases = json.loads((src / folder / f"{split}.json").read_text(encoding="utf-8"))[:n_test]
        (dst / folder / f"{split}.json").write_text(json.dumps(cases, ensure_ascii=False), encoding="utf-8")


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for rel in tracked.splitlines():
        if (REPO / rel).is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, root / rel)
    _small_root(REPO / "data" / "lawshift-sample", root / "data" / "small")
    params = _merge(yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8")), OVERRIDES)
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=root, check=True)
    return root


def test_experiment_workflow(project):
    first = _run(["dvc", "repro"], project)
    assert _ran(first) == {"base", "sample", "filter", "train", "eval@base", "eval@sft"}
    for name in ("base", "sample", "filter", "train", "eval_base", "eval_sft"):
        assert (project / "metrics" / f"{name}.json").is_file(), name
    assert (project / "models" / "sft" / "adapter_model.safetensors").is_file()

    # Nothing changed: nothing runs.
    assert _ran(_run(["dvc", "repro"], project)) == set()

    # An eval param changes only the eval stages.
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"], cwd=project,
                   check=True)
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    params["eval"]["show_old_statute"] = True
    (project / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False),
                                         encoding="utf-8")
    assert _ran(_run(["dvc", "repro"], project)) == {"eval@base", "eval@sft"}
    # Back to the committed run: params, lock and git-tracked metrics from git, cached outputs from DVC.
    subprocess.run(["git", "checkout", "-q", "HEAD", "--", "."], cwd=project, check=True)  # dvc autostages
    _run(["dvc", "checkout", "-q"], project)
    assert _ran(_run(["dvc", "repro"], project)) == set()

    # An acceptance-rule change runs filter, train and eval as an experiment, not sample.
    exp = _run(["dvc", "exp", "run", "-S", "filter.term_tolerance=2"], project)
    assert _ran(exp) == {"filter", "train", "eval@sft"}
    shown = _run(["dvc", "exp", "show", "--no-pager", "--md"], project)
    assert "filter.term_tolerance" in shown or "term_tolerance" in shown
    diff = _run(["dvc", "metrics", "diff", "HEAD", "--md"], project)
    assert "acceptance_rate" in diff  # more answers pass a 2-month tolerance
    everything = _run(["dvc", "metrics", "diff", "HEAD", "--all", "--md"], project)
    assert "overall.original" in everything and "overall.poisoned" in everything
