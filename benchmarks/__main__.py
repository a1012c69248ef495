"""Benchmarks, run side by side in one process and written to `benchmarks/results.json`.

    python -m benchmarks sampling                    # defaults: params.yaml's sample.* on models/base
    python -m benchmarks sampling --cases 16 --n 8 --max-new-tokens 256 --threads 2
    python -m benchmarks train                       # defaults: params.yaml's train.* on outputs/sft.jsonl
    python -m benchmarks train --epochs 1 --threads 2
    python -m benchmarks gpu_smoke                   # the pipeline on a CUDA machine (benchmarks/gpu_smoke.py)

Run from the repository root. `sampling` (benchmarks/sampling.py) times the reference's per-case generate loop,
batched generate and the project's sampler; `train` (benchmarks/train.py) times the train stage with random and
with length-grouped micro-batches. Each replaces its own entry of `benchmarks/results.json`, keeps the others, and
prints its table; `python -m benchmarks <name> --help` lists its options.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from benchmarks import driver, gpu_smoke, sampling, scaleout, train
from benchmarks.common import PROG, write_entry
from lawshift.core import files


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="bench", required=True)
    sampling.add_parser(sub)
    train.add_parser(sub)
    gpu_smoke.add_parser(sub)
    driver.add_parser(sub)
    scaleout.add_parser(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if getattr(args, "standalone", False):  # gpu_smoke: its own output and exit status, no results entry
        sys.exit(args.run(args))
    args.argv = argv
    result = args.run(args)
    write_entry(args.out, args.bench, result)
    args.show(result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    files.run_stage(main)
