"""Stage `train`: weighted, completion-only QLoRA SFT of the base on the filter's accepted answers.

Reads outputs/sft.jsonl and models/base; writes the PEFT adapter + tokenizer to models/sft/ and metrics/train.json.
Checkpoints go to checkpoints/sft/ (not a DVC output): rerunning after an interruption resumes from the newest
one made with the same data and settings. Curves: dvclive/train/ (declared as plots in dvc.yaml) and TensorBoard
event files in logs/train/ (`tensorboard --logdir logs/train`). The objective and the fallbacks are documented in
lawshift/training.py.

    python stages/train.py           # normally: dvc repro train
    accelerate launch --num_processes N stages/train.py   # with train.num_processes: N, one GPU each
"""

from pathlib import Path

from lawshift import files, models
from lawshift.params import load_params
from lawshift.runinfo import StageClock

SFT = Path("outputs/sft.jsonl")
OUT = Path("models/sft")
METRICS = Path("metrics/train.json")


def main() -> None:
    p = load_params()
    clock = StageClock()
    models.offline_env()
    from lawshift.training import train_sft  # heavy imports only after the params are known to be valid

    base = models.resolve_base("models/base")
    metrics = train_sft(base, SFT, OUT, p.train, trust_remote_code=p.model.trust_remote_code,
                        allow_pickle=p.model.allow_pickle)
    if metrics is not None:  # None on the other processes of a multi-process run
        metrics["peak_rss_mb"] = clock.stats()["peak_rss_mb"]
        files.write_json(METRICS, metrics)
        print(f"train: {metrics}")


if __name__ == "__main__":
    files.run_stage(main)
