"""Stage `eval@<model>`: LawShift success on both splits, plus the train-set check, for one model.

`base` is models/base as it is; `round1`, `round2`, ... are models/base with that round's adapter models/<round>
(the files: lawshift/paths.py EVAL). Writes outputs/<model>/predictions.jsonl (every answer, parsed and scored),
metrics/<model>/eval.json (mean, pass@k and majority vote over eval.num_samples draws), reports/eval_<model>.md and
the plot CSVs plots/eval_{folders,term_errors}/<model>.csv. An interrupted run continues from
outputs/<model>/predictions.jsonl.partial. The protocol: lawshift/evaluation.py.

    python stages/eval.py base       # normally: dvc repro eval@base (or eval@round1, ...)
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
    info = clock.write(paths.eval_files(name)["time"])
    m = result.metrics
    print(f"eval@{name}: overall {m['overall']}, train_exact {m['train_exact']} (pass@{m['k']} "
          f"{m['train_pass_at_k']}, majority {m['train_majority']}) ({info})")


if __name__ == "__main__":
    files.run_stage(main)
