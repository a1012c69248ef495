"""Stage `eval@<model>`: LawShift success on both splits, plus the train-set check, for one model.

`base` is models/base as it is; `sft` is models/base with the trained adapter models/sft merged in (the models and
their files: lawshift/paths.py EVAL). Writes outputs/predictions_<model>.jsonl (every answer, parsed and scored),
metrics/eval_<model>.json, reports/eval_<model>.md and the plot CSVs plots/eval_<model>_{folders,term_errors}.csv.
An interrupted run continues from outputs/predictions_<model>.jsonl.partial. The protocol: lawshift/evaluation.py.

    python stages/eval.py base       # normally: dvc repro eval@base (or eval@sft)
"""

import sys

from lawshift import evaluation, files, models, paths
from lawshift.params import load_params
from lawshift.report import write_outputs
from lawshift.runinfo import StageClock


def main(name: str | None = None) -> None:
    name = name or (sys.argv[1] if len(sys.argv) > 1 else "")
    p = load_params()
    models.offline_env()
    clock = StageClock()
    result = evaluation.run(p, name)
    write_outputs(name, result)
    result.partial.remove()
    info = clock.write(paths.EVAL[name]["time"])
    print(f"eval@{name}: overall {result.metrics['overall']}, train_exact {result.metrics['train_exact']} ({info})")


if __name__ == "__main__":
    files.run_stage(main)
