"""Stage `sample@<round>`: N answers per training case from the round's policy -> outputs/<round>/samples.jsonl.

The policy is the base for round1 and the base plus the previous round's adapter after it (`rounds` in
params.yaml); cases with too few right answers draw more (`sample.min_accepted`, `sample.max_samples`).
Resumable: records are appended and fsynced after every batch, so after Ctrl-C or a kill the same command
continues where it stopped (lawshift/sampling.py has the rules, lawshift/journal.py the file format).

    python stages/sample.py round1   # normally: dvc repro sample@round1

Sharded over several GPUs or machines: one process per shard, each overriding `sample.shard_index` and
`sample.num_shards`, writes outputs/<round>/samples.shard{i}-of-{n}.jsonl and its metrics beside the round's;
`python -m lawshift.merge --round <round>` then joins them into the round's samples.jsonl and sample.json.

    python stages/sample.py round1 --shard-index 0 --num-shards 4
"""

import argparse
import sys

from lawshift import files, models, paths, sampling
from lawshift.params import load_params
from lawshift.runinfo import StageClock


def arguments(argv: list[str]) -> tuple[str, dict]:
    """The round, and the shard overrides of `sample.*`."""
    ap = argparse.ArgumentParser(prog="stages/sample.py", description="the sample stage (default: all cases)")
    ap.add_argument("round", nargs="?", default="round1", help="the round to sample (default: round1)")
    ap.add_argument("--shard-index", type=int, help="this process's shard (overrides sample.shard_index)")
    ap.add_argument("--num-shards", type=int, help="shards of the run (overrides sample.num_shards)")
    args = ap.parse_args(argv)
    shard = {k: v for k, v in (("shard_index", args.shard_index), ("num_shards", args.num_shards)) if v is not None}
    return args.round, shard


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
              f"python -m lawshift.merge --round {name}")


if __name__ == "__main__":
    files.run_stage(main)
