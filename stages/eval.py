"""Stage `eval@<model>`: LawShift success on both splits, plus the train-set check, for one model.

`base` is models/base as it is; `round1`, `round2`, ... are models/base with that round's adapter models/<round>.
Writes outputs/<model>/predictions.jsonl, metrics/<model>/eval.json, reports/eval_<model>.md and
plots/eval_*/<model>.csv; an interrupted run continues from its partial predictions. The protocol:
lawshift/evaluate/evaluation.py.

    python stages/eval.py base                                   # normally: dvc repro eval@base (or eval@round1)
    python stages/eval.py base --shard-index 0 --num-shards 4    # one shard; then python -m lawshift.evaluate.evalmerge
"""

import argparse
import sys

from lawshift.core import files, models, paths
from lawshift.core.params import add_shard_options, load_params, shard_overrides
from lawshift.core.runinfo import StageClock
from lawshift.evaluate import evalmerge, evaluation
from lawshift.evaluate.report import write_outputs


def arguments(argv: list[str]) -> tuple[str, dict]:
    """The model, and the shard overrides of `eval.*`."""
    ap = argparse.ArgumentParser(prog="stages/eval.py", description="the eval stage of one model")
    ap.add_argument("model", nargs="?", default="", help="base, round1, round2, ...")
    add_shard_options(ap, "eval")
    args = ap.parse_args(argv)
    return args.model, shard_overrides(args)


def main(model: str | None = None) -> None:
    name, shard = arguments(sys.argv[1:] if model is None else [model])
    p = load_params(overrides={"eval": shard})
    models.offline_env()
    clock = StageClock()
    result = evaluation.run(p, name)
    where, e = paths.eval_files(name), p.eval
    if e.num_shards > 1:
        m = evalmerge.write_shard(paths.shard_file(where["predictions"], e.shard_index, e.num_shards), e.shard_index,
                                  e.num_shards, result)
    else:
        m = write_outputs(name, result).metrics
    result.partial.remove()
    info = clock.write(paths.shard_file(where["time"], e.shard_index, e.num_shards))
    print(f"eval@{name}: overall {m['overall']}, train_exact {m['train_exact']} (pass@{m['k']} "
          f"{m['train_pass_at_k']}, majority {m['train_majority']}) ({info})")
    if e.num_shards > 1:
        print(f"eval@{name}: shard {e.shard_index} of {e.num_shards} done; once all are: "
              f"python -m lawshift.evaluate.evalmerge --model {name}")


if __name__ == "__main__":
    files.run_stage(main)
