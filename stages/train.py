"""Stage `train@<round>`: weighted, completion-only QLoRA SFT of the base on the round's accepted answers.

Every round trains a fresh adapter from the base (ReST-EM), never on top of the previous round's. Reads
outputs/<round>/sft.jsonl and models/base; writes the PEFT adapter + tokenizer to models/<round>/ (with the
answers it trained on, sft.jsonl, for a later round's `keep_previous`) and metrics/<round>/train.json.
Checkpoints go to checkpoints/<round>/ (not a DVC output): rerunning after an interruption resumes from the newest
one made with the same data and settings. Curves: dvclive/<round>/, copied without timestamps to
plots/train_curves/<round>.csv for the charts, and TensorBoard event files in logs/<round>/ (`tensorboard --logdir
logs`). The data side, the objective and the run: lawshift/train/; N processes (train.num_processes): launch.py.

    python stages/train.py round1    # normally: dvc repro train@round1
"""

import csv
import os
import sys
from pathlib import Path

from lawshift.core import files, models, paths
from lawshift.core.params import Params, load_params
from lawshift.core.runinfo import StageClock
from lawshift.train import launch

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


def processes(p: Params, name: str) -> bool:
    """Before any training: start the N processes (True: they did the work), or settle this one's GPU (False)."""
    os.environ.update(launch.slurm_env(os.environ))
    if launch.is_worker():
        launch.die_with_parent()
        return False
    import torch

    from lawshift.train.sftdata import read_sft

    tp = p.train
    if tp.num_processes == 1:
        gpus = torch.cuda.device_count() if tp.device in ("auto", "cuda") else 0
        if one := launch.one_gpu_env(os.environ, gpus):
            os.environ.update(one)
            print(f"train@{name}: train.num_processes is 1, so one GPU: CUDA device {one['CUDA_VISIBLE_DEVICES']} "
                  f"of {gpus}", file=sys.stderr)
        return False
    p.round(name)  # bad input fails here in one line, not once per process
    read_sft(paths.round_files(name)["sft"])
    launch.step_layout(tp.per_device_train_batch_size, tp.gradient_accumulation_steps, tp.num_processes)
    launch.launch([__file__, name], tp.num_processes, models.pick_device(tp.device).type == "cpu",
                  f"train@{name}")
    return True


def main(name: str = "round1") -> None:
    p = load_params()
    clock = StageClock()
    models.offline_env()
    if processes(p, name):
        return
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
