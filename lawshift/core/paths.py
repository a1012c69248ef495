"""Where the pipeline's files live: the one list that dvc.yaml and the code both name.

dvc.yaml loads this file as `vars` (DVC reads its plain assignments of literals and skips the functions below; it
never runs the file), so `${BASE}` there and `paths.BASE` here are the same string. A round's and an evaluated
model's files are templates: dvc.yaml spells them with the stage's `${key}` in place of `{name}` (tests/test_dvc.py
checks that the two agree), the code formats them with `round_files` / `eval_files`. Their plot files go to one
folder per kind (plots/<kind>/<name>.csv), which the charts stage joins into CHARTS, one file per chart.
"""

# base
BASE = "models/base"
BASE_METRICS = "metrics/base.json"
BASE_TIME = "metrics/time/base.json"

# One set per round of `rounds` in params.yaml (round1, round2, ...): sample@<round> -> filter@<round> ->
# train@<round>. `adapter` is the round's model (base + this adapter); it also keeps the answers it was trained on
# (TRAINED_ON), which a later round with `keep_previous` adds to its own.
ROUND = {
    "samples": "outputs/{name}/samples.jsonl",
    "sample_metrics": "metrics/{name}/sample.json",
    "sample_time": "metrics/time/{name}/sample.json",
    "sft": "outputs/{name}/sft.jsonl",
    "filter_metrics": "metrics/{name}/filter.json",
    "filter_plot": "plots/filter_accepted/{name}.csv",
    "filter_time": "metrics/time/{name}/filter.json",
    "adapter": "models/{name}",
    "train_metrics": "metrics/{name}/train.json",
    "train_plot": "plots/train_curves/{name}.csv",  # loss and lr per step: DVCLive's curves, timestamps dropped
    "train_time": "metrics/time/{name}/train.json",
    "checkpoints": "checkpoints/{name}",
    "live": "dvclive/{name}",
    "tensorboard": "logs/{name}",
}
TRAINED_ON = "sft.jsonl"  # in a round's adapter directory: the weighted answers that round trained on

# The GRPO arm (stage grpo, lawshift/rl/): an adapter from the base like a round's, evaluated as eval_grpo (EVAL with
# {name} = GRPO). Its checkpoints each hold the answers and tokens paid for so far (METER), so a resumed run counts on.
GRPO = "grpo"
GRPO_FILES = {
    "adapter": "models/grpo",
    "metrics": "metrics/grpo/train.json",
    "steps": "outputs/grpo/steps.csv",  # per optimizer step: answers and tokens so far, mean reward, loss
    "time": "metrics/time/grpo/train.json",
    "checkpoints": "checkpoints/grpo",
}
METER = "meter.json"

# One set per evaluated model: `base`, every round's model (eval@<name>) and `grpo`. A model's weights are
# models/<name>: the base itself for `base`, the base plus that round's (or GRPO's) adapter otherwise.
EVAL = {
    "predictions": "outputs/{name}/predictions.jsonl",
    "metrics": "metrics/{name}/eval.json",
    "report": "reports/eval_{name}.md",
    "folders_plot": "plots/eval_folders/{name}.csv",
    "term_errors_plot": "plots/eval_term_errors/{name}.csv",
    "time": "metrics/time/{name}/eval.json",
}
BASE_MODEL = "base"  # the eval name of the untrained base

# The charts (dvc.yaml's top-level `plots`), one per kind over every model: the charts stage joins the per-model
# files of `folder` (ROUND's and EVAL's *_plot files of that kind) into `chart`. It depends on the folders, not on
# each file, so a new round needs no change to it.
CHARTS = {
    "eval_folders": {"folder": "plots/eval_folders", "chart": "plots/eval_folders.csv"},
    "eval_term_errors": {"folder": "plots/eval_term_errors", "chart": "plots/eval_term_errors.csv"},
    "filter_accepted": {"folder": "plots/filter_accepted", "chart": "plots/filter_accepted.csv"},
    "train_curves": {"folder": "plots/train_curves", "chart": "plots/train_curves.csv"},
}


def shard_file(out: str, index: int, num_shards: int) -> str:
    """Shard `index` of `num_shards`'s own file beside `out` (`out` itself when unsharded)."""
    from pathlib import Path  # in the function: DVC reads this file's top level as vars (tests/test_dvc.py)

    if num_shards == 1:
        return str(out)
    path = Path(out)
    return str(path.with_name(f"{path.stem}.shard{index}-of-{num_shards}{path.suffix}"))


def shard_files(out) -> list:
    """The shard files beside `out` (as `shard_file` names them), sorted by name."""
    from pathlib import Path

    path = Path(out)
    return sorted(path.parent.glob(f"{path.stem}.shard*-of-*{path.suffix}"))


def round_files(name: str) -> dict[str, str]:
    """The files of round `name`: ROUND with the round's name filled in."""
    return {key: template.format(name=name) for key, template in ROUND.items()}


def eval_files(name: str) -> dict[str, str]:
    """The files of eval@`name`, plus `weights` (what the model adds to models/base: a dvc.yaml dep) and
    `adapter` (the directory loaded on top of the base; "" for the base)."""
    weights = BASE if name == BASE_MODEL else ROUND["adapter"].format(name=name)
    return {**{key: template.format(name=name) for key, template in EVAL.items()}, "weights": weights,
            "adapter": "" if name == BASE_MODEL else weights}
