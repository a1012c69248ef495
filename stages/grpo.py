"""Stage `grpo`: the GRPO arm, a LoRA adapter trained from the base with TRL's GRPOTrainer on the filter's verifier.

By default it generates as many answers as all RFT rounds sampled together (their metrics/<round>/sample.json), so
the arms compare at equal cost; eval_grpo then scores models/grpo as eval@<round> scores a round's model. Writes
models/grpo/, outputs/grpo/steps.csv, metrics/grpo/train.json and metrics/time/grpo/train.json; a rerun after a
kill resumes from checkpoints/grpo/. The budget, reward and run: lawshift/rl/ (budget, reward, grpo).

    python stages/grpo.py    # normally: dvc repro grpo
"""

import argparse
import sys

from lawshift.core import files, models, paths
from lawshift.core.params import load_params
from lawshift.core.runinfo import StageClock


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="stages/grpo.py", description=__doc__.splitlines()[0])
    ap.parse_args(sys.argv[1:] if argv is None else argv)
    p = load_params()
    clock = StageClock()
    models.offline_env()
    from lawshift.rl import grpo  # heavy imports only after the params are known to be valid

    metrics, info = grpo.run(p)
    where = paths.GRPO_FILES
    files.write_json(where["metrics"], metrics)
    print(f"grpo: {metrics} ({clock.write(where['time'], info)})")


if __name__ == "__main__":
    files.run_stage(main)
