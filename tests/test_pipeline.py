"""The whole pipeline on the tiny model, driven the way researchers drive it: dvc repro, dvc exp run, metrics diff.

Runs in a small project with a copy of the repository's tracked files and its own git history (tests/conftest.py
`project(dvc=True)`), so it is the real `dvc.yaml` with its two rounds and the real stage scripts, only on fewer
cases and shorter training.
"""

import re

import pytest
from conftest import EV, FOLDER, R1, SAMPLE, read_json, run, set_params

from lawshift.core import paths
from lawshift.core.runinfo import time_files

pytestmark = pytest.mark.slow

# Small but complete: every stage runs its real code path, training all its epochs; resampling on, eval sampled.
PARAMS = {
    "sample": {"num_samples": 4, "max_new_tokens": 48, "batch_size": 8, "min_accepted": 1, "max_samples": 8},
    "train": {"num_train_epochs": 1, "max_steps": -1, "per_device_train_batch_size": 4,
              "gradient_accumulation_steps": 1, "warmup_steps": 0, "logging_steps": 1, "save_steps": 50,
              "max_length": 1024},
    "eval": {"max_new_tokens": 48, "train_subset": 8, "batch_size": 8, "num_samples": 2, "temperature": 0.7},
}
N_TRAIN, N_TEST = 12, 6
ROUNDS = ("round1", "round2")
STAGES = {"base", "eval_base", "grpo", "eval_grpo",
          *(f"{s}@{r}" for r in ROUNDS for s in ("sample", "filter", "train", "eval"))}
CHARTS = "charts"  # joins the others' plot files: it runs after them, whenever one of those files changes
R2 = paths.round_files("round2")
# Each stage's results file (dvc.yaml `metrics`), apart from its time file (runinfo.time_files).
RESULTS = {"base": paths.BASE_METRICS, "eval_base": EV["base"]["metrics"], "grpo": paths.GRPO_FILES["metrics"],
           "eval_grpo": paths.eval_files(paths.GRPO)["metrics"],
           **{f"eval@{r}": paths.eval_files(r)["metrics"] for r in ROUNDS},
           **{f"{s}@{r}": paths.round_files(r)[f"{s}_metrics"] for r in ROUNDS for s in ("sample", "filter", "train")}}
TIMING = {"wall_seconds", "peak_rss_mb"}


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def _changed(status: str) -> set[str]:
    """The stages `dvc status` lists (lines `name:` at the start of a line)."""
    return {line[:-1] for line in status.splitlines() if line.endswith(":") and not line.startswith((" ", "\t"))}


def commit(root, message: str) -> None:
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], root)


def test_experiment_workflow(project):
    root = project(n_train=N_TRAIN, n_test=N_TEST, params=PARAMS, base=False, dvc=True)
    assert not (root / paths.BASE).exists()  # the base stage builds it
    first = run(["dvc", "repro"], root)
    assert _ran(first) == STAGES | {CHARTS}
    for kind, where in paths.CHARTS.items():  # each chart's file: every model's rows, in model order
        lines = (root / where["chart"]).read_text(encoding="utf-8").splitlines()[1:]
        models = ["base", *ROUNDS, paths.GRPO] if kind.startswith("eval_") else list(ROUNDS)
        assert list(dict.fromkeys(line.split(",")[0] for line in lines)) == models, kind
    times = time_files(ROUNDS)
    assert set(RESULTS) == set(times) == STAGES
    for stage, file in RESULTS.items():
        assert (root / file).is_file(), file
        # how the stage ran is in its own time file, none of it among the results
        timing = read_json(root / times[stage])
        assert TIMING <= set(timing) and timing["wall_seconds"] >= 0, stage
        assert not TIMING & set(read_json(root / file)), stage
    for r in ROUNDS:
        assert (root / paths.round_files(r)["adapter"] / "adapter_model.safetensors").is_file()
        # the adapter keeps the answers it was trained on
        assert (root / paths.round_files(r)["adapter"] / paths.TRAINED_ON).read_bytes() == (
            root / paths.round_files(r)["sft"]).read_bytes()
    # this run's results, not the repository's copies: the small project's cases and folder
    sample1 = read_json(root / R1["sample_metrics"])
    assert sample1["cases"] == N_TRAIN
    # resampling: every case drew its 4, the resampled ones more, at most 8 in all
    assert sample1["answers_generated"] == N_TRAIN * 4 + sample1["extra_answers"]
    assert sample1["extra_answers"] <= sample1["cases_resampled"] * 4
    assert sample1["coverage"] >= sample1["coverage_first"]
    assert read_json(root / R1["filter_metrics"])["total_generated"] == sample1["answers_generated"]
    for model in ("base", *ROUNDS):
        m = read_json(root / paths.eval_files(model)["metrics"])
        assert list(m["folders"]) == [FOLDER] and m["folders"][FOLDER]["n"] == N_TEST
        assert m["k"] == 2 and m["train_pass_at_k"] >= m["train_exact"]
    assert read_json(root / R1["train_time"])["resumed_from"] is None
    assert len(read_json(SAMPLE / "training_set.json")) > N_TRAIN

    # Nothing changed: nothing runs.
    assert _ran(run(["dvc", "repro"], root)) == set()

    # An eval param changes only the eval stages.
    commit(root, "run")
    set_params(root, {"eval": {"show_old_statute": True}})
    assert _ran(run(["dvc", "repro"], root)) - {CHARTS} == {"eval_base", "eval@round1", "eval@round2", "eval_grpo"}
    # Back to the committed run: params, lock and git-tracked metrics from git, cached outputs from DVC.
    run(["git", "checkout", "-q", "HEAD", "--", "."], root)  # dvc autostages
    run(["dvc", "checkout", "-q"], root)
    assert _ran(run(["dvc", "repro"], root)) == set()

    # A param only round 2 reads: dvc status names round 2's filter alone, and the rerun stays in round 2.
    set_params(root, {"rounds": {"round2": {"keep_previous": True}}})
    assert _changed(run(["dvc", "status"], root)) == {"filter@round2"}
    ran = run(["dvc", "repro"], root)
    assert "filter@round2" in _ran(ran) and _ran(ran) <= {"filter@round2", "train@round2", "eval@round2", CHARTS}
    kept = read_json(root / R2["filter_metrics"])
    assert kept["kept_previous"] == read_json(root / R1["filter_metrics"])["sft_examples"] > 0
    run(["git", "checkout", "-q", "HEAD", "--", "."], root)
    run(["dvc", "checkout", "-q"], root)

    # An acceptance-rule change runs round 1's filter, train and eval as an experiment, not its sampling; round 2
    # samples from the new round-1 model, so all of round 2 follows.
    exp = run(["dvc", "exp", "run", "-S", "filter.term_tolerance=2"], root)
    assert _ran(exp) == STAGES - {"base", "eval_base", "sample@round1"} | {CHARTS}
    shown = run(["dvc", "exp", "show", "--no-pager", "--md"], root)
    assert "filter.term_tolerance" in shown or "term_tolerance" in shown
    diff = run(["dvc", "metrics", "diff", "HEAD", "--md"], root)
    assert "acceptance_rate" in diff  # more answers pass a 2-month tolerance
    everything = run(["dvc", "metrics", "diff", "HEAD", "--all", "--md"], root)
    assert "overall.original" in everything and "overall.pass_at_k.poisoned" in everything
    # the time files are declared metrics too, apart from the results
    assert R1["train_time"] in everything and "wall_seconds" in everything
