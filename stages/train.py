"""Stage `train`: weighted, completion-only QLoRA SFT of the base on the filter's accepted answers.

Reads outputs/sft.jsonl and models/base; writes the PEFT adapter + tokenizer to models/sft/ and metrics/train.json.
Checkpoints go to checkpoints/sft/ (not a DVC output): rerunning after an interruption resumes from the newest
one made with the same data and settings. Curves: dvclive/train/ (declared as plots in dvc.yaml) and TensorBoard
event files in logs/train/ (`tensorboard --logdir logs/train`). The data side is lawshift/sftdata.py, the
objective lawshift/objective.py, the run lawshift/training.py.

    python stages/train.py           # normally: dvc repro train
    accelerate launch --num_processes N stages/train.py   # with train.num_processes: N, one GPU each
"""

from lawshift import files, models, paths
from lawshift.params import load_params
from lawshift.runinfo import StageClock


def main() -> None:
    p = load_params()
    clock = StageClock()
    models.offline_env()
    from lawshift import training  # heavy imports only after the params are known to be valid

    done = training.run(p)
    if done is not None:  # None on the other processes of a multi-process run
        metrics, info = done
        files.write_json(paths.TRAIN_METRICS, metrics)
        print(f"train: {metrics} ({clock.write(paths.TIME['train'], info)})")


if __name__ == "__main__":
    files.run_stage(main)
