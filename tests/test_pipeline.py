"""The whole pipeline on the tiny model, driven the way researchers drive it: dvc repro, dvc exp run, metrics diff.

Runs in a small project with a copy of the repository's tracked files and its own git history (tests/conftest.py
`project(dvc=True)`), so it is the real `dvc.yaml` and the real stage scripts, only on fewer cases and shorter
training.
"""

import re

import pytest
from conftest import FOLDER, SAMPLE, read_json, run, set_params

from lawshift import paths
from lawshift.runinfo import time_files

pytestmark = pytest.mark.slow

# Small but complete: every stage runs its real code path, training all its epochs.
PARAMS = {
    "sample": {"num_samples": 4, "max_new_tokens": 48, "batch_size": 8},
    "train": {"num_train_epochs": 1, "max_steps": -1, "per_device_train_batch_size": 4,
              "gradient_accumulation_steps": 1, "warmup_steps": 0, "logging_steps": 1, "save_steps": 50,
              "max_length": 1024},
    "eval": {"max_new_tokens": 48, "train_subset": 8, "batch_size": 8},
}
N_TRAIN, N_TEST = 12, 6
STAGES = {"base", "sample", "filter", "train", "eval@base", "eval@sft"}
# Each stage's results file (dvc.yaml `metrics`), apart from its time file (runinfo.time_files).
RESULTS = {"base": paths.BASE_METRICS, "sample": paths.SAMPLE_METRICS, "filter": paths.FILTER_METRICS,
           "train": paths.TRAIN_METRICS, **{f"eval@{m}": e["metrics"] for m, e in paths.EVAL.items()}}
TIMING = {"wall_seconds", "peak_rss_mb"}


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def commit(root, message: str) -> None:
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], root)


def test_experiment_workflow(project):
    root = project(n_train=N_TRAIN, n_test=N_TEST, params=PARAMS, base=False, dvc=True)
    assert not (root / paths.BASE).exists()  # the base stage builds it
    first = run(["dvc", "repro"], root)
    assert _ran(first) == STAGES
    assert set(RESULTS) == set(time_files()) == STAGES
    for stage, file in RESULTS.items():
        assert (root / file).is_file(), file
        # how the stage ran is in its own time file, none of it among the results
        timing = read_json(root / time_files()[stage])
        assert TIMING <= set(timing) and timing["wall_seconds"] >= 0, stage
        assert not TIMING & set(read_json(root / file)), stage
    assert not (root / "metrics" / "eval_base_time.json").exists()
    assert (root / paths.ADAPTER / "adapter_model.safetensors").is_file()
    # this run's results, not the repository's copies: the small project's cases and folder
    assert read_json(root / paths.SAMPLE_METRICS)["cases"] == N_TRAIN
    assert read_json(root / paths.FILTER_METRICS)["total_generated"] == N_TRAIN * PARAMS["sample"]["num_samples"]
    for model in paths.EVAL:
        folders = read_json(root / paths.EVAL[model]["metrics"])["folders"]
        assert list(folders) == [FOLDER] and folders[FOLDER]["n"] == N_TEST
    assert read_json(root / paths.TIME["train"])["resumed_from"] is None
    assert len(read_json(SAMPLE / "training_set.json")) > N_TRAIN

    # Nothing changed: nothing runs.
    assert _ran(run(["dvc", "repro"], root)) == set()

    # An eval param changes only the eval stages.
    commit(root, "run")
    set_params(root, {"eval": {"show_old_statute": True}})
    assert _ran(run(["dvc", "repro"], root)) == {"eval@base", "eval@sft"}
    # Back to the committed run: params, lock and git-tracked metrics from git, cached outputs from DVC.
    run(["git", "checkout", "-q", "HEAD", "--", "."], root)  # dvc autostages
    run(["dvc", "checkout", "-q"], root)
    assert _ran(run(["dvc", "repro"], root)) == set()

    # An acceptance-rule change runs filter, train and eval as an experiment, not sample.
    exp = run(["dvc", "exp", "run", "-S", "filter.term_tolerance=2"], root)
    assert _ran(exp) == {"filter", "train", "eval@sft"}
    shown = run(["dvc", "exp", "show", "--no-pager", "--md"], root)
    assert "filter.term_tolerance" in shown or "term_tolerance" in shown
    diff = run(["dvc", "metrics", "diff", "HEAD", "--md"], root)
    assert "acceptance_rate" in diff  # more answers pass a 2-month tolerance
    everything = run(["dvc", "metrics", "diff", "HEAD", "--all", "--md"], root)
    assert "overall.original" in everything and "overall.poisoned" in everything
    # the time files are declared metrics too, apart from the results
    assert paths.TIME["train"] in everything and "wall_seconds" in everything
