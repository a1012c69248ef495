"""Stage `train@<round>`: weighted, completion-only QLoRA SFT of the base on the round's accepted answers.

Every round trains a fresh adapter from the base (ReST-EM), never on top of the previous round's. Reads
outputs/<round>/sft.jsonl and models/base; writes the PEFT adapter + tokenizer to models/<round>/ (with the
answers it trained on, sft.jsonl, for a later round's `keep_previous`) and metrics/<round>/train.json.
Checkpoints go to checkpoints/<round>/ (not a DVC output): rerunning after an interruption resumes from the newest
one made with the same data and settings. Curves: dvclive/<round>/, copied without timestamps to
plots/train_curves/<round>.csv for the charts, and TensorBoard event files in logs/<round>/ (`tensorboard --logdir
logs`). The data side, the objective and the run: lawshift/train/ (sftdata, objective, training).

    python stages/train.py round1    # normally: dvc repro train@round1
    accelerate launch --num_processes N stages/train.py round1   # with train.num_processes: N, one GPU each
"""

import csv
from pathlib import Path

from lawshift.core import files, models, paths
from lawshift.core.params import load_params
from lawshift.core.runinfo import StageClock

CURVES = ("loss", "learning_rate")  # DVCLive's curves (dvclive/<round>/plots/metrics/<curve>.tsv) the charts draw


def write_curves(live: str | Path, path: str | Path) -> None:
    """DVCLive's loss and lr curves as one CSV, `step,loss,learning_rate` by step (a value not logged at a step is
    empty); DVCLive's timestamps are left out, so the file's bytes follow the training alone."""
    by_step: dict[int, dict[str, str]] = {}
    for curve in CURVES:
        tsv = Path(live) / "plots" / "metrics" / f"{curve}.tsv"
        with open(tsv, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                by_step.setdefault(int(row["step"]), {})[curve] = row[curve]
    lines = [",".join(["step", *CURVES])]
    lines += [",".join([str(step), *(values.get(c, "") for c in CURVES)]) for step, values in sorted(by_step.items())]
    files.write_text(path, "\n".join(lines) + "\n")


def main(name: str = "round1") -> None:
    p = load_params()
    clock = StageClock()
    models.offline_env()
    from lawshift.train import training  # heavy imports only after the params are known to be valid

    done = training.run(p, name)
    if done is not None:  # None on the other processes of a multi-process run
        metrics, info = done
        where = paths.round_files(name)
        write_curves(where["live"], where["train_plot"])
        files.write_json(where["train_metrics"], metrics)
        print(f"train@{name}: {metrics} ({clock.write(where['train_time'], info)})")


if __name__ == "__main__":
    args = files.command_line("stages/train.py", __doc__, positional=("round", "round1", "the round to train"))
    files.run_stage(lambda: main(args.round))
