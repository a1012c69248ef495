"""Stage `sample@<round>`: N answers per training case from the round's policy -> outputs/<round>/samples.jsonl.

    python stages/sample.py round1                                 # normally: dvc repro sample@round1
    python stages/sample.py round1 --shard-index 0 --num-shards 4  # one shard; then python -m lawshift.sample.merge

The policy is the base for round1, the base plus the previous round's adapter after it. Resumable: after Ctrl-C or
a kill the same command continues where it stopped (lawshift/sample/sampling.py, lawshift/core/journal.py).
"""

import argparse
import sys

from lawshift.core import files, models, paths
from lawshift.core.params import add_shard_options, load_params, shard_overrides
from lawshift.core.runinfo import StageClock
from lawshift.sample import sampling


def arguments(argv: list[str]) -> tuple[str, dict]:
    """The round, and the shard overrides of `sample.*`."""
    ap = argparse.ArgumentParser(prog="stages/sample.py", description="the sample stage (default: all cases)")
    ap.add_argument("round", nargs="?", default="round1", help="the round to sample (default: round1)")
    add_shard_options(ap, "sample")
    args = ap.parse_args(argv)
    return args.round, shard_overrides(args)


def main(argv: list[str] | None = None) -> None:
    name, shard = arguments(sys.argv[1:] if argv is None else argv)
    p = load_params(overrides={"sample": shard})
    models.offline_env()
    clock = StageClock()
    metrics, info = sampling.run(p, name)
    where = paths.round_files(name)
    files.write_json(sampling.output_path(p.sample, where["sample_metrics"]), metrics)
    info = clock.write(sampling.output_path(p.sample, where["sample_time"]), info)
    print(f"sample@{name}: {metrics} ({info})")
    if p.sample.num_shards > 1:
        print(f"sample@{name}: shard {p.sample.shard_index} of {p.sample.num_shards} done; once all are: "
              f"python -m lawshift.sample.merge --round {name}")


if __name__ == "__main__":
    files.run_stage(main)
