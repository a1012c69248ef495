"""Benchmarks of lawshift-rft: measurements of the project's code, not part of the installed `lawshift` package.

Run from the repository root, one command for all of them (see `benchmarks/__main__.py`):

    python -m benchmarks sampling        # benchmarks/sampling.py: per-case generate vs batched vs the sampler
    python -m benchmarks train           # benchmarks/train.py: random vs length-grouped micro-batches

Each writes its own entry of `metrics/bench.json` (keeping the others) and prints a table. `benchmarks/common.py`
holds what they share: the environment record, the metrics file, the common options and the long prompts.
"""
