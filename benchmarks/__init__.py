"""Benchmarks of lawshift-rft: measurements of the project's code, not part of the installed `lawshift` package.

Run from the repository root, one command for all of them (see `benchmarks/__main__.py`):

    python -m benchmarks sampling        # benchmarks/sampling.py: per-case generate vs batched vs the sampler
    python -m benchmarks train           # benchmarks/train.py: random vs length-grouped micro-batches
    python -m benchmarks gpu_smoke       # benchmarks/gpu_smoke.py: the pipeline on a CUDA machine

Each of the first two writes its own entry of `benchmarks/results.json` (keeping the others) and prints a table.
"""

import os

# The caller's environment, taken before any import adds to it (lawshift sets its numerics and GPU settings, vLLM
# its own): the GPU smoke run starts every stage from this, as `dvc repro` would from the user's shell.
SHELL_ENV = dict(os.environ)

import lawshift  # noqa: E402, F401  (after SHELL_ENV, before any benchmark imports torch: the numerics pins)
