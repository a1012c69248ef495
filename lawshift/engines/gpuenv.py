"""The process environment GPU engines need, set when the package is imported (before torch or vLLM read it).

* `PYTORCH_NVML_BASED_CUDA_CHECK=1`: `torch.cuda.is_available()` asks NVML instead of initialising the CUDA driver.
  A process whose driver is initialised cannot hand CUDA to a forked child, and vLLM forks its engine unless told
  otherwise (it imports the same setting itself, but only once `vllm` is imported: too late for a stage).
* `VLLM_WORKER_MULTIPROC_METHOD=spawn`: vLLM's engine and workers start as fresh processes, safe whatever the
  caller touched (the stage scripts keep their `__main__` guards: spawn re-imports them).
* `VLLM_NO_USAGE_STATS=1`: no usage report to vLLM's servers (offline machines).

Each is a default: a value the user set wins. `VLLM_BATCH_INVARIANT=1` is set by the vLLM backend when the run asks
for bitwise-reproducible answers (`sample.batch_invariant`, `eval.batch_invariant`).
"""

from __future__ import annotations

import os

DEFAULTS = {"PYTORCH_NVML_BASED_CUDA_CHECK": "1", "VLLM_WORKER_MULTIPROC_METHOD": "spawn", "VLLM_NO_USAGE_STATS": "1"}


def prepare() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
