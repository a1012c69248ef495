"""Stage `sample`: N answers per training case from the base policy -> outputs/samples.jsonl.

Resumable: records are appended and fsynced after every batch, so after Ctrl-C or a kill the same command
continues where it stopped (lawshift/sampling.py has the rules, lawshift/journal.py the file format).

    python stages/sample.py          # normally: dvc repro sample

Sharded over several GPUs or machines: one process per shard, each overriding `sample.shard_index` and
`sample.num_shards`, writes outputs/samples.shard{i}-of-{n}.jsonl and metrics/sample.shard{i}-of-{n}.json;
`python -m lawshift.merge` then joins them into outputs/samples.jsonl and metrics/sample.json.

    python stages/sample.py --shard-index 0 --num-shards 4
"""

import argparse
import sys

from lawshift import files, models, paths, sampling
from lawshift.params import load_params
from lawshift.runinfo import StageClock


def shard_overrides(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="stages/sample.py", description="the sample stage (default: all cases)")
    ap.add_argument("--shard-index", type=int, help="this process's shard (overrides sample.shard_index)")
    ap.add_argument("--num-shards", type=int, help="shards of the run (overrides sample.num_shards)")
    args = ap.parse_args(argv)
    return {k: v for k, v in (("shard_index", args.shard_index), ("num_shards", args.num_shards)) if v is not None}


def main(argv: list[str] | None = None) -> None:
    p = load_params(overrides={"sample": shard_overrides(sys.argv[1:] if argv is None else argv)})
    models.offline_env()
    clock = StageClock()
    metrics, info = sampling.run(p)
    files.write_json(sampling.output_path(p.sample, paths.SAMPLE_METRICS), metrics)
    info = clock.write(sampling.output_path(p.sample, paths.TIME["sample"]), info)
    print(f"sample: {metrics} ({info})")
    if p.sample.num_shards > 1:
        print(f"sample: shard {p.sample.shard_index} of {p.sample.num_shards} done; once all are: "
              "python -m lawshift.merge")


if __name__ == "__main__":
    files.run_stage(main)
